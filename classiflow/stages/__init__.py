"""File-level stage runners: read a stage's inputs from a :class:`~classiflow.layout.Layout`,
write its outputs atomically, and return a summary for the orchestration layer to log."""
