"""Pretrained weights for ``model.pretrained``: a local file, a ``local-dir:`` folder or an ``hf-hub:`` id.

Offline by default: a hub id is read from the local Hugging Face cache only (``HF_HUB_OFFLINE=1``), unless
``model.allow_download`` is on, so a missing file fails at once in one line. Files are read as safetensors or
with ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors. The weights' own preprocessing
(mean, std, input size) and licence come from their config (a safetensors ``pretrained_cfg`` metadata entry or
a folder's ``config.json``, timm's format), else from timm's default config of the architecture.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classiflow.atomic import atomic_path
from classiflow.checksum import verify_sha256
from classiflow.errors import ClassiflowError
from classiflow.models.timm_zoo import PREFIX, first_conv_name, head_module_names, is_timm

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
DIR_FILES = ("model.safetensors", "pytorch_model.bin")
CONTAINERS = ("state_dict_ema", "model_ema", "state_dict", "model")


@dataclass(frozen=True)
class Weights:
    source: str  # as model.pretrained gave it
    file: Path
    sha256: str
    state: dict[str, torch.Tensor] = field(repr=False)
    config: dict[str, Any]  # timm's pretrained_cfg keys: mean, std, input_size, license, ...

    def record(self) -> dict[str, Any]:
        """What the checkpoint, MLflow and the model card keep about the weights (JSON-able)."""
        cfg = self.config
        return {
            "source": self.source,
            "file": self.file.name,
            "sha256": self.sha256,
            "license": cfg.get("license"),
            "mean": list(cfg["mean"]) if cfg.get("mean") else None,
            "std": list(cfg["std"]) if cfg.get("std") else None,
            "input_size": list(cfg["input_size"]) if cfg.get("input_size") else None,
        }


def _from_hub(repo: str, allow_download: bool) -> tuple[Path, dict]:
    if not allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    files = {}
    for name in ("config.json", *DIR_FILES):
        try:
            files[name] = Path(hf_hub_download(repo, name, local_files_only=not allow_download))
        except (LocalEntryNotFoundError, EntryNotFoundError):
            continue
        except Exception as err:  # noqa: BLE001 - network, auth and repo errors all mean: not available
            raise ClassiflowError(f"model.pretrained hf-hub:{repo}: {str(err).splitlines()[0]}") from None
    weights = next((files[n] for n in DIR_FILES if n in files), None)
    if weights is None:
        how = "could not be fetched" if allow_download else "is not in the local cache and model.allow_download is off"
        raise ClassiflowError(f"model.pretrained hf-hub:{repo}: {how}")
    return weights, _config_json(files.get("config.json"))


def _config_json(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ClassiflowError(f"{path}: unreadable config ({err})") from None
    return dict(cfg.get("pretrained_cfg") or {}) | (
        {"architecture": cfg["architecture"]} if "architecture" in cfg else {}
    )


def _from_dir(folder: Path) -> tuple[Path, dict]:
    if not folder.is_dir():
        raise ClassiflowError(f"model.pretrained local-dir:{folder}: no such folder")
    weights = next((folder / n for n in DIR_FILES if (folder / n).exists()), None)
    if weights is None:
        raise ClassiflowError(f"model.pretrained local-dir:{folder}: holds neither {' nor '.join(DIR_FILES)}")
    return weights, _config_json(folder / "config.json")


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a weights file and the config stored in it (safetensors metadata only)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except Exception as err:  # noqa: BLE001 - a corrupt header or body
            raise ClassiflowError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]})") from None
        return state, json.loads(meta["pretrained_cfg"]) if "pretrained_cfg" in meta else {}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated, or code that weights_only refuses
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0][:200]
        raise ClassiflowError(f"{path}: not a readable weights file ({reason})") from None
    if isinstance(payload, dict):
        payload = next((payload[k] for k in CONTAINERS if isinstance(payload.get(k), dict)), payload)
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ClassiflowError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}, {}


def read_weights(source: str, sha256: str | None, allow_download: bool) -> Weights:
    """Resolve ``model.pretrained`` to a verified file and read it."""
    if source.startswith("hf-hub:"):
        path, cfg = _from_hub(source.removeprefix("hf-hub:"), allow_download)
    elif source.startswith("local-dir:"):
        path, cfg = _from_dir(Path(source.removeprefix("local-dir:")).expanduser())
    else:
        path, cfg = Path(source).expanduser(), {}
        if not path.is_file():
            raise ClassiflowError(f"model.pretrained {path}: no such file")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ClassiflowError(f"model.pretrained {path}: expected a {', '.join(WEIGHT_SUFFIXES)} file")
    digest = verify_sha256(path, sha256, key="model.pretrained_sha256")
    state, stored = _read_state(path)
    return Weights(source, path, digest, state, cfg | stored)


def with_defaults(weights: Weights, model_name: str) -> Weights:
    """Fill what the weights' config leaves out from timm's default config of the architecture."""
    if not is_timm(model_name):
        return weights
    import timm

    default = timm.models.get_pretrained_cfg(model_name.removeprefix(PREFIX))
    base = {
        k: v for k, v in (default.to_dict() if default else {}).items() if k in ("mean", "std", "input_size", "license")
    }
    return Weights(weights.source, weights.file, weights.sha256, weights.state, base | weights.config)


def normalization(weights: Weights, channels: int) -> tuple[list[float], list[float]] | None:
    """The weights' mean and std for ``channels`` inputs (a one-channel stem sums RGB: the channel average)."""
    mean, std = weights.config.get("mean"), weights.config.get("std")
    if not mean or not std:
        return None
    if channels == 1 and len(mean) == 3:
        return [sum(mean) / 3], [sum(std) / 3]
    return [float(m) for m in mean], [float(s) for s in std]


def _filtered(model: nn.Module, state: dict) -> dict:
    """The architecture's own checkpoint filter (e.g. a ViT's position embedding resampled to the image size)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return dict(state)
    try:
        return fn(dict(state), model)
    except Exception:  # noqa: BLE001 - a filter for another checkpoint layout: the checks below will tell
        return dict(state)


def load_into(model: nn.Module, weights: Weights, model_name: str) -> list[str]:
    """Copy the weights into ``model``, the stem adapted to its channels; return the tensors left fresh (a
    head sized for other classes). A tensor that does not fit fails in one line naming it."""
    from timm.models import adapt_input_conv

    state, target = _filtered(model, weights.state), model.state_dict()
    stem = f"{first_conv_name(model)}.weight"
    if stem in state and stem in target and state[stem].ndim == 4 and state[stem].shape[1] != target[stem].shape[1]:
        state[stem] = adapt_input_conv(target[stem].shape[1], state[stem])
    head = [f"{h}.{p}" for h in head_module_names(model) for p in ("weight", "bias")]
    fresh = [k for k in head if k in target and (k not in state or state[k].shape != target[k].shape)]
    for key in fresh:
        state.pop(key, None)
    where = f"{weights.file} does not fit {model_name}"
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if wrong:
        k = wrong[0]
        raise ClassiflowError(f"{where}: {k} is {tuple(state[k].shape)} there, {tuple(target[k].shape)} in the model")
    missing = [k for k in target if k not in state and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    for keys, what in ((missing, "lacks"), (unexpected, "has an unexpected tensor")):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ClassiflowError(f"{where}: it {what} {keys[0]}{more}")
    model.load_state_dict(state, strict=False)
    return fresh


def save_weights(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """A safetensors file with its preprocessing in the metadata, written then renamed."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"pretrained_cfg": json.dumps(config)})
