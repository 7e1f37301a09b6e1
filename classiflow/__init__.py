"""classiflow: the library layer (plain PyTorch, NumPy, scikit-learn; no orchestration)."""

__version__ = "0.1.0"
