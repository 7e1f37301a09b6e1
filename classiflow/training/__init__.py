"""Training: the loop, its optimiser/schedule/EMA recipe parts, and resumable state."""

from classiflow.training.device import autocast, seed_everything, select_device
from classiflow.training.loop import TrainResult, fit

__all__ = ["TrainResult", "autocast", "fit", "select_device", "seed_everything"]
