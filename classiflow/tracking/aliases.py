"""Promote and roll back ``@champion``: the registry side of the promotion gate (``classiflow.promotion``).

Every decision is written to the registered model as a ``classiflow.promotion.<UTC time>`` tag,
so the registry itself holds the history of which version was champion, when and why. Rollback
replays that history rather than trusting a single ``previous_champion`` tag, which would lose
everything before the last promotion.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import tempfile
from dataclasses import dataclass, replace

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from classiflow.config import Params
from classiflow.errors import ClassiflowError
from classiflow.promotion import Decision, correctness, decide
from classiflow.tracking.refs import CHAMPION, parse_ref
from classiflow.tracking.store import setup

HISTORY = "classiflow.promotion."
PREDICTIONS = "evaluation/predictions.csv"
LATENCY_TAG = "latency_ms_batch1"
OPERATING_TAG = "operating_point"  # met / missed: evaluate's threshold policy on test (classiflow.operating)


@dataclass(frozen=True)
class Outcome:
    name: str
    action: str  # promote, refuse, noop or rollback
    version: str  # the candidate, or the version a rollback restores
    champion_before: str | None
    champion_after: str | None
    decision: Decision | None = None
    dry_run: bool = False
    source: str | None = None  # models:/<other>/<v> when --force copied another model's version


def _by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _registered(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise ClassiflowError(f"no registered model named {name!r}; run the pipeline first") from None


def _candidate(client: MlflowClient, params: Params, name: str, version: str | None, force: bool):
    """The version asked for, in the grammar of :func:`classiflow.tracking.refs.parse_ref` (a number,
    ``@alias``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``); default ``@<register.alias>``."""
    ref = parse_ref(version, params, name=name, alias=params.registry.alias)
    if ref.path is not None:
        raise ClassiflowError(f"{version!r} is a directory; promote takes a registered version")
    if ref.name != name and not force:
        raise ClassiflowError(
            f"{version} is a version of {ref.name!r}, not of {name!r}; pass --force to copy it into {name!r}"
        )
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, ref.version)
    except MlflowException:
        what = f"@{ref.alias} version" if ref.alias is not None else f"version {ref.version}"
        raise ClassiflowError(f"{ref.name} has no {what} to promote") from None


def _predictions(version, role: str) -> tuple[list[str], list[str]]:
    where = f"{role} version {version.version} of {version.name}"
    if not version.run_id:
        raise ClassiflowError(f"{where} has no source run, so no {PREDICTIONS} to compare")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=PREDICTIONS, dst_path=tmp)
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (MlflowException, OSError):
            raise ClassiflowError(
                f"{where}: its run {version.run_id} has no readable {PREDICTIONS} artifact; "
                "re-register it, or pass --force to promote without the comparison"
            ) from None
    if not rows or rows[0] != ["actual", "predicted"] or any(len(r) != 2 for r in rows[1:]):
        raise ClassiflowError(f"{where}: {PREDICTIONS} is not an actual,predicted table")
    return [r[0] for r in rows[1:]], [r[1] for r in rows[1:]]


def _check_same_task(candidate, champion) -> None:
    for tag, what in (("data_hash", "data hash"), ("classes", "classes")):
        mine, theirs = candidate.tags.get(tag), champion.tags.get(tag)
        if tag == "classes" and mine and theirs:
            mine, theirs = json.loads(mine), json.loads(theirs)
        if mine != theirs:
            raise ClassiflowError(
                f"version {candidate.version} has another {what} than champion version {champion.version} "
                f"({mine} vs {theirs}), so their test results are not comparable; pass --force to promote anyway"
            )


def _correctness(candidate, champion):
    """Per-image correctness of both models, after checking they were scored on the same images."""
    if champion is not None:
        _check_same_task(candidate, champion)
    actual, predicted = _predictions(candidate, "candidate")
    if champion is None:
        return correctness(actual, predicted), None
    champ_actual, champ_predicted = _predictions(champion, "champion")
    if champ_actual != actual:
        raise ClassiflowError(
            f"version {candidate.version} and champion version {champion.version} were scored on different "
            f"test images ({len(actual)} vs {len(champ_actual)} rows); pass --force to promote anyway"
        )
    return correctness(actual, predicted), correctness(champ_actual, champ_predicted)


def _accuracy(version) -> float | None:
    value = version.tags.get("test_accuracy") if version is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _latency(version) -> float | None:
    value = version.tags.get(LATENCY_TAG)
    try:
        return float(value) if value is not None else None
    except ValueError:
        raise ClassiflowError(f"version {version.version}: tag {LATENCY_TAG}={value!r} is not a number") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _record(client: MlflowClient, name: str, event: dict) -> str:
    """Add one history tag; the key sorts by time and is bumped by a microsecond if it is taken."""
    taken = set(_registered(client, name).tags)
    when = dt.datetime.fromisoformat(event["time"])
    key = HISTORY + when.strftime("%Y%m%dT%H%M%S.%fZ")
    while key in taken:
        when += dt.timedelta(microseconds=1)
        key = HISTORY + when.strftime("%Y%m%dT%H%M%S.%fZ")
    client.set_registered_model_tag(name, key, json.dumps(event, separators=(",", ":")))
    return key


def history(client: MlflowClient, name: str) -> list[dict]:
    """Every recorded promotion event, oldest first."""
    tags = _registered(client, name).tags
    events = []
    for key in sorted(k for k in tags if k.startswith(HISTORY)):
        try:
            events.append(json.loads(tags[key]))
        except json.JSONDecodeError:
            continue  # a hand-written tag is not ours to interpret
    return events


def promote(
    params: Params, name: str, version: str | None = None, force: bool = False, dry_run: bool = False
) -> Outcome:
    """Move ``@champion`` to the candidate (default ``@<register.alias>``) if the gate allows it."""
    setup(params)
    client = MlflowClient()
    _registered(client, name)
    candidate = _candidate(client, params, name, version, force)
    foreign = candidate.name != name
    champion = _by_alias(client, name, CHAMPION)
    before = str(champion.version) if champion else None
    if champion is not None and not foreign and before == str(candidate.version):
        reason = "it already is the champion; nothing changed"
        decision = Decision(True, reason, params.promote.policy, params.promote.alpha, forced=force)
        return Outcome(name, "noop", before, before, before, decision, dry_run)

    decision = _gate(params, candidate, champion, force)
    source = f"models:/{candidate.name}/{candidate.version}" if foreign else None
    if dry_run:
        action = "promote" if decision.promote else "refuse"
        after = None if foreign else str(candidate.version) if decision.promote else before
        return Outcome(name, action, str(candidate.version), before, after, decision, True, source)

    if decision.promote and foreign:
        candidate = client.copy_model_version(source, name)
    chosen = str(candidate.version)
    time = _now().isoformat(timespec="microseconds")
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, chosen)
        if before is not None:
            client.set_model_version_tag(name, chosen, "previous_champion", before)
    after = chosen if decision.promote else before
    action = "promote" if decision.promote else "refuse"
    event = {"action": action, "candidate": chosen, "champion_before": before, "champion_after": after}
    event |= {k: getattr(decision, k) for k in ("candidate_accuracy", "champion_accuracy", "p_value", "b", "c", "n")}
    event |= {"policy": decision.policy, "alpha": decision.alpha, "forced": force, "reason": decision.reason}
    event |= {"source": source, "time": time} if source else {"time": time}
    _record(client, name, event)
    version_tags = {
        "promotion.decision": "promoted" if decision.promote else "refused",
        "promotion.reason": decision.reason,
        "promotion.p_value": None if decision.p_value is None else f"{decision.p_value:.6g}",
        "promotion.champion_before": before,
        "promotion.time": time,
    }
    for key, value in version_tags.items():
        if value is not None:
            client.set_model_version_tag(name, chosen, key, value)
    return Outcome(name, action, chosen, before, after, decision, False, source)


def _gate(params: Params, candidate, champion, force: bool) -> Decision:
    """The promotion gate on the two versions' per-image correctness; forced, a failed comparison is noted."""
    try:
        cand_correct, champ_correct = _correctness(candidate, champion)
        skipped = None
    except ClassiflowError as exc:
        if not force:
            raise
        cand_correct, champ_correct, skipped = None, None, str(exc)
    gate = params.promote
    decision = decide(
        cand_correct,
        champ_correct,
        policy=gate.policy,
        alpha=gate.alpha,
        max_latency_ms=gate.max_latency_ms,
        candidate_latency_ms=_latency(candidate),
        has_champion=champion is not None,
        force=force,
        operating_point=candidate.tags.get(OPERATING_TAG),
    )
    if skipped:  # forced without a comparison: the registered accuracies are still worth recording
        accuracies = {"candidate_accuracy": _accuracy(candidate), "champion_accuracy": _accuracy(champion)}
        decision = replace(decision, reason=f"{decision.reason}; not compared: {skipped}", **accuracies)
    return decision


def _champions(events: list[dict]) -> list[str]:
    """Replay the history: each promotion pushes a champion, each rollback pops one."""
    stack: list[str] = []
    for event in events:
        if event.get("action") == "promote" and event.get("champion_after"):
            stack.append(str(event["champion_after"]))
        elif event.get("action") == "rollback" and stack:
            stack.pop()
    return stack


def rollback(params: Params, name: str, dry_run: bool = False) -> Outcome:
    """Give ``@champion`` back to the version that held it before the current one."""
    setup(params)
    client = MlflowClient()
    stack = _champions(history(client, name))
    champion = _by_alias(client, name, CHAMPION)
    current = str(champion.version) if champion else None
    if current is None:
        raise ClassiflowError(f"{name} has no @champion to roll back")
    if not stack:
        raise ClassiflowError(
            f"{name} has no promotion history (its @champion was set by hand or by an older classiflow); "
            "promote a version explicitly instead"
        )
    if stack[-1] != current:
        raise ClassiflowError(
            f"@champion is version {current} but the promotion history says {stack[-1]} "
            "(was the alias moved by hand?); promote a version explicitly instead"
        )
    if len(stack) < 2:
        raise ClassiflowError(f"{name} has no earlier champion than version {current} to roll back to")
    target = stack[-2]
    try:
        client.get_model_version(name, target)
    except MlflowException:
        raise ClassiflowError(f"the previous champion, version {target} of {name}, no longer exists") from None
    if dry_run:
        return Outcome(name, "rollback", target, current, target, dry_run=True)
    time = _now().isoformat(timespec="microseconds")
    client.set_registered_model_alias(name, CHAMPION, target)
    reason = f"rolled back from version {current} to the previous champion"
    event = {"action": "rollback", "candidate": target, "champion_before": current, "champion_after": target}
    _record(client, name, event | {"reason": reason, "time": time})
    for version, decision in ((current, "rolled back"), (target, "restored by rollback")):
        client.set_model_version_tag(name, version, "promotion.decision", decision)
        client.set_model_version_tag(name, version, "promotion.reason", reason)
        client.set_model_version_tag(name, version, "promotion.time", time)
    return Outcome(name, "rollback", target, current, target)
