"""Pruning a trained model and measuring the trade-off: accuracy lost against size and latency gained.

Import the submodules (``params``, ``unstructured``, ``structured``, ``schedule``, ``saving``,
``measure``, ``sweep``) directly: this package imports nothing itself, so validating ``params.yaml``
never loads PyTorch or torch-pruning.
"""
