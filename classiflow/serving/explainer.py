"""Grad-CAM for the served model, when PyTorch is installed beside the server.

The exported files (ONNX, TorchScript) carry no gradients, so an explanation runs the trained network itself:
the export stage writes its weights (``model.safetensors``, no pickle) and names its architecture in
``preprocessing.json`` under ``explain``. The torch-free serving image answers /explain with 501 and says so;
a server started from the training environment (``classiflow serve``) explains with the same method and layer
as the evaluate stage's gallery. The network is loaded on the first /explain request, not at startup, so a
server that is never asked pays nothing.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from classiflow.errors import ClassiflowError

OVERLAY_ALPHA = 0.45
JET = (  # matplotlib's "jet" breakpoints per channel: the evaluate gallery's colours, without matplotlib
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)


class Explainer:
    """The trained network behind raw-pixel preprocessing; one explanation at a time (Grad-CAM sets hooks)."""

    def __init__(self, directory: Path, spec: dict):
        from classiflow.explain import load_explainable
        from classiflow.tensors import WithPreprocessing

        net = load_explainable(directory, spec["explain"])
        self.module = WithPreprocessing(net, spec["mean"], spec["std"]).eval()
        self.lock = threading.Lock()

    def heatmap(self, image: np.ndarray, index: int) -> np.ndarray:
        """uint8 (S, S, C) image -> float32 (S, S) heat map in [0, 1] for class ``index``."""
        import torch

        from classiflow.explain import grad_cam

        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]
        with self.lock:
            return grad_cam(self.module, pixels, torch.tensor([index]))[0].astype(np.float32)


def unavailable(directory: Path, spec: dict) -> str | None:
    """Why this model cannot be explained here, in one line, or ``None`` when it can."""
    entry = spec.get("explain")
    if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), dict):
        return "this model was exported without weights for explanations (re-run the export stage)"
    if not (directory / str(entry.get("weights"))).is_file():
        return f"{entry.get('weights')} is missing beside preprocessing.json (re-run the export stage)"
    if importlib.util.find_spec("torch") is None:
        return "explanations need PyTorch, which this server does not have (serve from the training environment)"
    return None


_loading = threading.Lock()


def explainer_for(model) -> Explainer:
    """The model's explainer, built once (under a lock, so two first requests build one)."""
    with _loading:
        if model.explainer is None:
            try:
                model.explainer = Explainer(Path(model.details["directory"]), model.spec)
            except Exception as err:  # noqa: BLE001 - a model that cannot be rebuilt is reported, not a 500
                if isinstance(err, ClassiflowError):
                    raise
                raise ClassiflowError(f"the model cannot be rebuilt for explanations ({err})".splitlines()[0]) from None
        return model.explainer


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB in the ``jet`` colour map."""
    v = np.clip(values, 0.0, 1.0)
    return np.stack([(255.0 * np.interp(v, x, y)).astype(np.uint8) for x, y in JET], axis=-1)


def overlay_png(image: np.ndarray, heat: np.ndarray) -> str:
    """The model's input with the heat map over it, as a ``data:`` URL (what the page shows)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    mixed = (1.0 - OVERLAY_ALPHA) * rgb.astype(np.float32) + OVERLAY_ALPHA * jet(heat).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
