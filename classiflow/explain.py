"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

The heat map is the last convolution's activations weighted by the spatially averaged gradient of the class
score, rectified and upsampled to the input. Written here in a few lines with hooks (rather than the
``grad-cam`` package, which pulls the GUI build of OpenCV) so that it works the same for the built-in conv nets
and for timm models; a network without convolutions (the ViT) is refused with one line.

:func:`gallery` picks what a reviewer wants to see: for each class, its most confident test mistakes and a
sample of its correct answers. :func:`save_explainable` / :func:`load_explainable` carry the trained network beside the
exported files (safetensors, no pickle) so that a server with PyTorch can explain what it serves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classiflow.atomic import atomic_path
from classiflow.errors import ClassiflowError

MIN_CHANNELS = 8  # a convolution with fewer outputs is an attention map (CBAM's), not features
WEIGHTS_FILE = "model.safetensors"  # beside the exported files: the trained network, for explanations
log = logging.getLogger("classiflow.explain")


def target_layer(model: nn.Module) -> nn.Module:
    """The last feature ``Conv2d`` in definition order: the highest-level spatial features of a conv net. A
    transformer's only convolution is its patch embedding, at the bottom: nothing to explain from there."""
    modules = list(model.modules())
    if any(isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention" for m in modules):
        raise ClassiflowError(
            f"Grad-CAM: {type(model).__name__} is a transformer, it has no convolution to explain from"
        )
    convs = [m for m in modules if isinstance(m, nn.Conv2d) and m.out_channels >= MIN_CHANNELS]
    if not convs:
        raise ClassiflowError(f"Grad-CAM: {type(model).__name__} has no convolution to explain from")
    return convs[-1]


def save_explainable(net: nn.Module, architecture: dict, directory: Path) -> dict | None:
    """Write the network's weights to ``directory`` and return the ``explain`` entry of preprocessing.json, or
    ``None`` (with a warning) for a network Grad-CAM cannot explain."""
    from safetensors.torch import save_model

    try:
        layer = next(name for name, m in net.named_modules() if m is target_layer(net))
    except ClassiflowError as err:
        log.warning("export: no explanations: %s", err)
        return None
    save_model(net, str(directory / WEIGHTS_FILE))
    return {"method": "grad-cam", "weights": WEIGHTS_FILE, "architecture": dict(architecture), "layer": layer}


def load_explainable(directory: Path, entry: dict) -> nn.Module:
    """The network :func:`save_explainable` wrote, rebuilt from its architecture (strict: every tensor must fit)."""
    from safetensors.torch import load_model

    from classiflow.models import build_model

    path = Path(directory) / str(entry["weights"])
    if not path.is_file():
        raise ClassiflowError(f"{path}: missing; the export stage writes it beside the model files")
    net = build_model(**entry["architecture"])
    try:
        load_model(net, str(path), strict=True, device="cpu")
    except Exception as err:  # noqa: BLE001 - a damaged or mismatched file raises several types
        raise ClassiflowError(
            f"{path}: does not fit {entry['architecture'].get('name')} ({err})".splitlines()[0]
        ) from None
    return net.eval()


def grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """Heat maps in [0, 1], (N, H, W) at the input's size, for ``classes[i]`` of normalised ``images[i]``."""
    layer, saved = target_layer(model), {}

    def keep(_module, _inputs, output):
        output.register_hook(lambda grad: saved.__setitem__("grad", grad))
        saved["act"] = output.detach().clone()  # before any in-place activation after it

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # so that a frozen stem still carries a graph
            logits = model(x)
            model.zero_grad(set_to_none=True)
            logits.gather(1, classes.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = saved["act"], saved["grad"].detach()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (cam / peak).cpu().numpy()


def gallery(
    labels: np.ndarray, probs: np.ndarray, mistakes: int = 3, correct: int = 2, seed: int = 0, limit: int = 60
) -> list[int]:
    """Test rows to explain: per class, its ``mistakes`` most confident wrong answers, then ``correct`` right
    ones drawn at random (seeded); at most ``limit`` in all (the first classes' when there are many)."""
    rng, predicted, chosen = np.random.default_rng(seed), probs.argmax(1), []
    for c in range(probs.shape[1]):
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        chosen += wrong[np.argsort(-probs[wrong].max(1))][:mistakes].tolist()
        right = np.flatnonzero((labels == c) & (predicted == c))
        chosen += sorted(rng.choice(right, min(correct, len(right)), replace=False).tolist())
    return chosen[:limit]


def plot_note(path: Path, text: str) -> None:
    """A one-line image in place of the gallery, saying why there is none (the pipeline's output stays present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_gallery(path: Path, images: np.ndarray, cams: np.ndarray, captions: list[str], wrong: list[bool]) -> None:
    """Each image beside its heat-map overlay; mistakes captioned in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = len(images), 6  # three image/overlay pairs per row
    rows = max(1, -(-2 * n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
        plain, overlay = axes.flat[2 * i], axes.flat[2 * i + 1]
        plain.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        overlay.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        overlay.imshow(cams[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        plain.set_title(captions[i], fontsize=6, color="red" if wrong[i] else "black")
    fig.suptitle("Grad-CAM of the answer: per class its most confident test mistakes (red) and correct answers",
                 fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
