"""The promotion gate: McNemar's decision rule, and promote/rollback against a real (sqlite) registry."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from classiflow.config import Params
from classiflow.errors import ClassiflowError
from classiflow.promotion import compare, decide
from classiflow.tracking.aliases import PREDICTIONS, history, promote, rollback

CLASSES = ["a", "b"]
ACTUAL = ["a", "b"] * 30  # 60 test images


def _correct(n_right: int, n: int = 60) -> np.ndarray:
    return np.arange(n) < n_right


def test_mcnemar_uses_only_the_discordant_pairs():
    cand, champ = _correct(60), _correct(50)  # candidate right on 10 images the champion gets wrong
    result = compare(cand, champ)
    assert (result.b, result.c, result.test) == (10, 0, "exact")
    assert result.p_value == pytest.approx(2 * 0.5**10)
    assert compare(champ, champ).p_value == 1.0


def test_compare_refuses_different_test_sets():
    with pytest.raises(ClassiflowError, match="different test sets"):
        compare(_correct(5, 10), _correct(5, 12))


@pytest.mark.parametrize(
    "cand,champ,policy,expected",
    [
        (50, None, "not_worse", True),  # first champion
        (50, 50, "not_worse", True),  # equal
        (48, 50, "not_worse", True),  # worse, but within noise (p = 0.5)
        (40, 60, "not_worse", False),  # significantly worse
        (60, 50, "better", True),  # significantly better
        (52, 50, "better", False),  # better, not significantly
        (50, 50, "better", False),
    ],
)
def test_gate_policies(cand, champ, policy, expected):
    decision = decide(_correct(cand), None if champ is None else _correct(champ), policy=policy)
    assert decision.promote is expected, decision.reason


def test_latency_budget_and_force():
    slow = decide(_correct(60), None, max_latency_ms=1.0, candidate_latency_ms=2.5)
    assert not slow.promote and "exceeds the budget" in slow.reason
    assert not decide(_correct(60), None, max_latency_ms=1.0).promote  # no latency measured
    forced = decide(_correct(40), _correct(60), force=True)
    assert forced.promote and forced.forced and "would have refused" in forced.reason


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = Params()  # the default gate: not_worse, alpha 0.05
    from classiflow.tracking.store import setup

    experiment = setup(params)
    client = MlflowClient()

    def add(name: str, n_right: int, data_hash: str = "h1", predictions: bool = True) -> str:
        predicted = [a if i < n_right else ("b" if a == "a" else "a") for i, a in enumerate(ACTUAL)]
        with mlflow.start_run(experiment_id=experiment) as run:
            if predictions:
                lines = ["actual,predicted", *(f"{a},{p}" for a, p in zip(ACTUAL, predicted, strict=True))]
                mlflow.log_text("\n".join(lines) + "\n", PREDICTIONS)
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        tags = {"test_accuracy": f"{n_right / len(ACTUAL):.6f}", "data_hash": data_hash}
        for key, value in (tags | {"classes": json.dumps(CLASSES)}).items():
            client.set_model_version_tag(name, version.version, key, value)
        return str(version.version)

    def champion(name: str = "m") -> str:
        return str(client.get_model_version_by_alias(name, "champion").version)

    return params, client, add, champion


def test_promote_refuse_dry_run_and_rollback_keep_a_history(registry):
    params, client, add, champion = registry
    v1, v2, v3 = add("m", 50), add("m", 30), add("m", 58)

    assert promote(params, "m", v1).action == "promote" and champion() == v1
    refused = promote(params, "m", v2)
    assert refused.action == "refuse" and champion() == v1
    assert refused.decision.p_value < 0.05 and refused.decision.c == 20
    assert client.get_model_version("m", v2).tags["promotion.decision"] == "refused"

    dry = promote(params, "m", v3, dry_run=True)
    assert dry.action == "promote" and dry.dry_run and champion() == v1
    assert len(history(client, "m")) == 2  # a dry run records nothing

    assert promote(params, "m", v3).champion_after == v3 and champion() == v3
    assert client.get_model_version("m", v3).tags["previous_champion"] == v1
    assert promote(params, "m", v3).action == "noop"

    assert rollback(params, "m", dry_run=True).version == v1 and champion() == v3
    back = rollback(params, "m")
    assert (back.champion_before, back.champion_after) == (v3, v1) and champion() == v1
    with pytest.raises(ClassiflowError, match="no earlier champion"):
        rollback(params, "m")
    actions = [e["action"] for e in history(client, "m")]
    assert actions == ["promote", "refuse", "promote", "rollback"]
    assert json.loads(client.get_registered_model("m").tags[sorted(client.get_registered_model("m").tags)[1]])[
        "p_value"
    ] == pytest.approx(refused.decision.p_value)


def test_bad_candidates_are_refused_with_clear_errors(registry):
    params, client, add, champion = registry
    v1 = add("m", 50)
    promote(params, "m", v1)
    other_data = add("m", 55, data_hash="h2")
    with pytest.raises(ClassiflowError, match="another data hash"):
        promote(params, "m", other_data)
    assert promote(params, "m", other_data, force=True).action == "promote" and champion() == other_data

    no_predictions = add("m", 55, data_hash="h2", predictions=False)
    with pytest.raises(ClassiflowError, match="no readable evaluation/predictions.csv"):
        promote(params, "m", no_predictions)

    foreign = add("other", 55, data_hash="h2")
    with pytest.raises(ClassiflowError, match="not of 'm'.*--force"):
        promote(params, "m", f"models:/other/{foreign}")
    with pytest.raises(ClassiflowError, match="no version 99"):
        promote(params, "m", "99")
    with pytest.raises(ClassiflowError, match="no registered model named 'nope'"):
        promote(params, "nope", "1")
