"""Register and promote: the MLflow model registry side of the pipeline."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from prefect import task

from classiflow.atomic import read_json, write_json
from classiflow.checkpoint import load_checkpoint
from classiflow.config import Params
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.promotion import Decision, decide
from classiflow.tensors import WithPreprocessing
from tasks.tracking import git_commit, log_to_pipeline, run_logger, setup, stage_run

CHAMPION = "champion"


def registered_name(params: Params, dataset: str) -> str:
    return params.registry.model_name or f"classiflow-{dataset}"


@task(name="register")
def register(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    net, ckpt = load_checkpoint(layout.model)
    metrics = read_json(layout.eval_metrics)
    data = load_prepared(layout.prepared, ("test",))
    name = registered_name(params, data.meta["dataset"])
    model = WithPreprocessing(net, ckpt["mean"], ckpt["std"]).eval()
    test = data.images["test"][:4]
    example = np.ascontiguousarray(test.transpose(0, 3, 1, 2)).astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    preprocessing = {
        "input": "float32 N,C,H,W raw pixel values 0-255",
        "channels": ckpt["model"]["in_channels"],
        "image_size": ckpt["model"]["image_size"],
        "mean": ckpt["mean"],
        "std": ckpt["std"],
        "classes": ckpt["classes"],
    }
    with stage_run("register", layout, params, pipeline_run_id, kind="deep") as pipeline:
        mlflow.log_params({"register.model_name": name, "register.alias": params.registry.alias})
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
        mlflow.log_artifact(str(layout.model), "checkpoint")
        mlflow.log_dict(preprocessing, "checkpoint/preprocessing.json")
        version = str(info.registered_model_version)
        client = MlflowClient()
        tags = {
            "test_accuracy": f"{metrics['accuracy']:.6f}",
            "macro_f1": f"{metrics['macro_f1']:.6f}",
            "data_hash": ckpt["data_hash"],
            "git_commit": git_commit(),
            "architecture": ckpt["model"]["name"],
            "classes": json.dumps(ckpt["classes"]),
            "pipeline_run_id": pipeline,
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, params.registry.alias, version)
        log_to_pipeline(pipeline, tags={"registered_model": name, "registered_version": version})
        result = {"model_name": name, "version": version, "alias": params.registry.alias, "model_uri": info.model_uri}
        write_json(layout.registration, result)
    run_logger().info("register: %s version %s is now @%s", name, version, params.registry.alias)
    return result


def _accuracy(version) -> float | None:
    value = version.tags.get("test_accuracy")
    return float(value) if value is not None else None


def _by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(params: Params, name: str, version: str | None = None, force: bool = False) -> tuple[Decision, str]:
    """Move ``@champion`` to ``version`` (default: ``@challenger``) if the rule allows it."""
    setup(params)
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ClassiflowError(f"no registered model named {name!r}; run the pipeline first") from None
    if version is None:
        candidate = _by_alias(client, name, params.registry.alias)
        if candidate is None:
            raise ClassiflowError(f"{name} has no @{params.registry.alias} version to promote")
    else:
        try:
            candidate = client.get_model_version(name, version)
        except MlflowException:
            raise ClassiflowError(f"{name} has no version {version}") from None
    champion = _by_alias(client, name, CHAMPION)
    if champion is not None and champion.version == candidate.version:
        return Decision(True, "it already is the champion; nothing changed"), candidate.version
    decision = decide(_accuracy(candidate), _accuracy(champion) if champion else None, force)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        if champion is not None:
            client.set_model_version_tag(name, candidate.version, "previous_champion", champion.version)
    return decision, candidate.version
