"""Named training recipes: ``recipes/<name>.yaml`` names only what differs from the defaults (the
pydantic defaults, which ``params.yaml`` equals), as lightning-hydra-template's experiment configs do.

Applied, a recipe sets every key of the sections it owns (``model``, ``augment``, ``train``,
``evaluate``): the default of each, then the recipe's differences. So applying one recipe after
another leaves nothing of the first behind, and ``dvc exp run -S`` gets the complete settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from classiflow.config import Params, parse_params
from classiflow.errors import ClassiflowError

SECTIONS = ("model", "augment", "train", "evaluate")


def recipes_dir(root: str | Path | None = None) -> Path:
    return Path(root or Path.cwd()) / "recipes"


def list_recipes(root: str | Path | None = None) -> dict[str, str]:
    """Recipe name -> one-line description."""
    out = {}
    for path in sorted(recipes_dir(root).glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out[path.stem] = str(raw.get("description", "")).strip()
    return out


def load_recipe(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """Every key of the owned sections as dotted overrides, e.g. ``{"train.epochs": 10, ...}``."""
    path = recipes_dir(root) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_recipes(root)) or "none found"
        raise ClassiflowError(f"recipe {name!r}: unknown (available: {known})")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    sections = raw.get("params") or {}
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ClassiflowError(f"{path}: a recipe sets only {', '.join(SECTIONS)} (got {', '.join(sorted(unknown))})")
    diff = {f"{s}.{k}": v for s, values in sections.items() for k, v in (values or {}).items()}
    parse_params({}, str(path), diff)  # fail here, naming the recipe file, not in a stage
    defaults = Params().model_dump(by_alias=True)
    return {f"{s}.{k}": v for s in SECTIONS for k, v in defaults[s].items()} | diff


def apply_recipe(raw_params: dict, name: str, root: str | Path | None = None) -> Params:
    return parse_params(raw_params, f"recipe {name}", load_recipe(name, root))


def dvc_set_args(overrides: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run`` (values in YAML/JSON syntax)."""
    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["-S", f"{key}={text}"]
    return args
