"""Hyper-parameter sweeps: an Optuna study whose trials are whole pipeline runs (``flows/sweep.py`` dispatches them)."""
