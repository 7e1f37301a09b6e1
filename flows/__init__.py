"""Prefect flows (and the CLI that DVC stages call): compositions of the tasks in ``tasks/``."""
