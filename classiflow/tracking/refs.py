"""Which model to serve: a registry reference or a local directory, turned into files on disk.

``classiflow serve`` and ``classiflow predict`` load the ONNX file and ``preprocessing.json`` that the
export stage wrote and ``register`` attached to the version as ``extra_files/``. Only that folder is
downloaded (not the PyTorch flavour), once per version: into a temporary sibling first, renamed into
the cache when complete, so an interrupted download is never mistaken for a model. Registered
versions are immutable, so a cached version is never refreshed; the cache key also carries the
tracking URI and the version's source, so two stores with a model of the same name cannot collide.

MLflow is imported only for registry references: serving a local directory needs none of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from classiflow.atomic import read_json
from classiflow.config import Params
from classiflow.errors import ClassiflowError
from classiflow.layout import SPEC_FILE, Layout, project_root

CHAMPION = "champion"
MODEL_FILES = ("model.onnx", "model.ts")  # what classiflow.serving.model.load_model_dir can run
TEXT_TAGS = ("data_hash", "git_commit", "architecture")
NOT_METRICS = ("previous_champion", "pipeline_run_id")  # numbers that measure nothing
_NAME_VERSION = re.compile(r"^(?P<name>[^@]+)/(?P<version>\d+|latest)$")


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a local ``path``, or a registered ``name`` with an ``alias`` or a ``version``."""

    text: str
    path: Path | None = None
    name: str | None = None
    alias: str | None = None
    version: str | None = None


def registered_name(params: Params, dataset: str) -> str:
    """The name the register stage gives the model: ``register.model_name``, else ``classiflow-<dataset>``."""
    return params.registry.model_name or f"classiflow-{dataset}"


def default_name(params: Params, root: str | Path = ".") -> str:
    """The model meant when none is named: ``register.model_name``, else the one the last register used."""
    if params.registry.model_name:
        return params.registry.model_name
    registration = Layout.at(root).registration
    if registration.exists():
        return read_json(registration)["model_name"]
    raise ClassiflowError(
        "which registered model? name it (--name, or --model models:/<name>@champion): no register.model_name "
        f"in params, no {registration.relative_to(Layout.at(root).root)}"
    )


def parse_ref(ref: str | None, params: Params, name: str | None = None, alias: str = CHAMPION) -> Ref:
    """The one grammar of model references, for serve, predict and promote.

    ``models:/n@alias``, ``models:/n/3``, ``n@alias``, ``n/3``, ``n`` (its ``alias``) or a directory; ``3``,
    ``latest`` and ``@alias`` mean that version of ``name`` (default: :func:`default_name`), and None its
    ``alias``.
    """
    if ref is None or ref.strip().startswith("@") or ref.strip().isdigit() or ref.strip() == "latest":
        name = name or default_name(params)
        text = (ref or f"@{alias}").strip()
        if text.startswith("@"):
            if not text[1:] or "/" in text:
                raise ClassiflowError(f"{ref!r}: expected @<alias>, e.g. @champion")
            return Ref(f"models:/{name}{text}", name=name, alias=text[1:])
        return Ref(f"models:/{name}/{text}", name=name, version=text)
    text = ref.strip()
    registry = text.startswith("models:/")
    body = text.removeprefix("models:/").strip("/")
    if not registry and Path(text).expanduser().is_dir():
        return Ref(text, path=Path(text).expanduser().resolve())
    if not body:
        raise ClassiflowError(f"{ref!r}: expected models:/<name>@<alias>, models:/<name>/<version> or a directory")
    if "@" in body:
        name, _, alias = body.rpartition("@")
        if not name or not alias or "/" in alias:
            raise ClassiflowError(f"{ref!r}: expected <name>@<alias>, e.g. classiflow-cifar10@champion")
        return Ref(text, name=name, alias=alias)
    match = _NAME_VERSION.match(body)
    if match:
        return Ref(text, name=match["name"], version=match["version"])
    if not registry and ("/" in body or os.sep in body or body.startswith(".")):
        raise ClassiflowError(f"{ref}: no such directory (nor a <name>/<version> reference)")
    if "/" in body:
        raise ClassiflowError(f"{ref!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return Ref(text, name=body, alias=CHAMPION)


def model_dir(path: Path) -> Path:
    """A ``models/export`` directory, or a downloaded model directory holding ``extra_files/``."""
    for candidate in (path, path / "extra_files"):
        if (candidate / SPEC_FILE).is_file():
            if not any((candidate / f).is_file() for f in MODEL_FILES):
                raise ClassiflowError(f"{candidate}: {SPEC_FILE} but no {' or '.join(MODEL_FILES)} beside it")
            return candidate
    expected = "expected models/export or a downloaded model"
    raise ClassiflowError(f"{path}: no {SPEC_FILE} here or in extra_files/ ({expected})")


def _local(ref: Ref) -> tuple[Path, str, str, dict]:
    folder = model_dir(ref.path)
    try:
        spec = read_json(folder / SPEC_FILE)
    except (OSError, ValueError) as err:
        raise ClassiflowError(f"{folder / SPEC_FILE}: not readable JSON ({err})") from None
    metrics = {"data_hash": spec["data_hash"]} if isinstance(spec, dict) and spec.get("data_hash") else {}
    return folder, "local", str(ref.path), metrics


def version_metrics(tags: dict[str, str]) -> dict:
    """The version's numeric tags as floats (accuracy, F1, latency, ...) and its provenance strings."""
    metrics: dict = {}
    for key, value in sorted(tags.items()):
        if key in TEXT_TAGS:
            metrics[key] = value
        elif key not in NOT_METRICS and not key.startswith(("promotion.", "mlflow.")):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if number == number and abs(number) != float("inf"):  # NaN and inf are not JSON
                metrics[key] = number
    return metrics


def _client(params: Params):
    from classiflow.tracking.store import client

    return client(params)


def _names(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models(max_results=50))


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = _names(client)
        known = f"registered: {', '.join(names)}" if names else "none is registered yet; run the pipeline first"
        raise ClassiflowError(f"no registered model named {name!r} ({known})") from None


def _version(client, ref: Ref):
    """The model version the reference points at now (an alias moves; a number does not)."""
    from mlflow.exceptions import MlflowException

    model = _registered(client, ref.name)
    if ref.alias is not None:
        aliases = dict(getattr(model, "aliases", {}) or {})
        if ref.alias not in aliases:
            have = ", ".join(f"@{a} -> version {v}" for a, v in sorted(aliases.items())) or "no aliases"
            hint = "; `classiflow promote` sets @champion" if ref.alias == CHAMPION else ""
            raise ClassiflowError(f"{ref.name} has no @{ref.alias} ({have}){hint}")
        return client.get_model_version_by_alias(ref.name, ref.alias)
    versions = sorted((v for v in client.search_model_versions(f"name = '{ref.name}'")), key=lambda v: int(v.version))
    if ref.version == "latest" and versions:
        return versions[-1]
    try:
        return client.get_model_version(ref.name, ref.version)
    except MlflowException:
        have = ", ".join(str(v.version) for v in versions) or "none"
        raise ClassiflowError(f"{ref.name} has no version {ref.version} (versions: {have})") from None


def cache_root() -> Path:
    return Path(os.environ.get("CLASSIFLOW_CACHE") or project_root() / ".cache") / "serving"


def _cache_dir(version) -> Path:
    from classiflow.tracking.uri import tracking_uri

    key = json.dumps([tracking_uri(), version.source, version.run_id, version.creation_timestamp])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", version.name)
    return cache_root() / safe / f"{version.version}-{digest}"


def _not_exported(where: str, why: str) -> ClassiflowError:
    return ClassiflowError(
        f"{where} has {why}: it was registered before the export stage existed; re-run the pipeline "
        "(dvc repro, or classiflow run) to register an exported version, or serve models/export directly"
    )


def _download(version) -> Path:
    """``extra_files/`` of the version, downloaded once; a half download never takes the final name."""
    import mlflow

    final = _cache_dir(version)
    where = f"version {version.version} of {version.name}"
    if (final / SPEC_FILE).is_file():
        return model_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        uri = f"models:/{version.name}/{version.version}/extra_files"
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
        except Exception as err:  # noqa: BLE001 - not found, or a store/network failure (boto, requests, OSError)
            line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ClassiflowError(
                f"{where}: downloading extra_files/ failed ({line}); a version registered before the export "
                "stage existed has none: re-run the pipeline to register an exported version"
            ) from None
        files = tmp / "extra_files" if (tmp / "extra_files").is_dir() else tmp
        if not (files / SPEC_FILE).is_file():
            raise _not_exported(where, f"no extra_files/{SPEC_FILE}")
        if not any((files / f).is_file() for f in MODEL_FILES):
            raise _not_exported(where, f"no extra_files/{' or '.join(MODEL_FILES)}")
        if final.exists():  # an earlier copy without the spec (made by hand?): replace it
            shutil.rmtree(final)
        try:
            os.rename(files, final)
        except OSError:
            if not (final / SPEC_FILE).is_file():  # not another process that finished the same download first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir(final)


def resolve(ref: str | None, params: Params) -> tuple[Path, str, str, dict]:
    """(directory with preprocessing.json and model.onnx, name, version, metrics) for ``ref``.

    ``ref=None`` means ``models:/<register.model_name or the last registered name>@champion``.
    """
    parsed = parse_ref(ref, params)
    if parsed.path is not None:
        return _local(parsed)
    client = _client(params)
    version = _version(client, parsed)
    return _download(version), version.name, str(version.version), version_metrics(dict(version.tags))


def latest_version(ref: str | None, params: Params) -> str | None:
    """The version ``ref`` points at now, for alias polling; None for a local directory.

    Raises ClassiflowError when the registry cannot answer, so a poller can log it and keep serving.
    """
    parsed = parse_ref(ref, params)
    if parsed.path is not None:
        return None
    try:
        return str(_version(_client(params), parsed).version)
    except ClassiflowError:
        raise
    except Exception as err:  # noqa: BLE001 - an unreachable or broken store: the caller keeps its model
        raise ClassiflowError(f"cannot ask the registry about {parsed.text}: {type(err).__name__}: {err}") from None
