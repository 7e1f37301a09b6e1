"""Getting data in: download/copy a source, then prepare fixed splits as uint8 arrays."""
