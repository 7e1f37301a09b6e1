"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class ClassiflowError(Exception):
    """A mistake in the input or configuration that the user can fix."""
