"""Operating points: per-class probability thresholds chosen on validation, and the decision they make.

On an inspection line the question is not "which class is most likely" but "may this part pass". With a
normal class named (``evaluate.normal_class: ok``), a part is a defect as soon as any defect class reaches its
threshold (the most probable such class is the answer), ``ok`` only when none does and ``ok`` reaches its own,
and ``uncertain`` otherwise: it goes to a person. Without a normal class, the most probable class is the answer
when it reaches its threshold, else ``uncertain`` (selective classification).

Policies (``evaluate.threshold_policy``), chosen on the validation split and applied once to test:

- ``min_recall`` (target r): each defect class's threshold is the highest that still catches a share r of its
  validation images; without a normal class, the highest that keeps that class's recall at r.
- ``max_false_alarm`` (target f, normal class needed): each of the k defect classes may flag at most f / k of the
  validation ``ok`` images, so that all together flag at most f.

NumPy only (plus scikit-learn for the curves), so that serving can decide without PyTorch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from classiflow.errors import ClassiflowError

UNCERTAIN = -1


@dataclass(frozen=True)
class OperatingPoint:
    policy: str
    target: float
    normal: str | None
    thresholds: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> OperatingPoint:
        return cls(
            raw["policy"], float(raw["target"]), raw.get("normal"), {k: float(v) for k, v in raw["thresholds"].items()}
        )


def decide(probs: np.ndarray, classes: list[str], point: OperatingPoint | None) -> np.ndarray:
    """Class index per image, or ``UNCERTAIN`` (-1); the plain argmax without an operating point."""
    if point is None:
        return probs.argmax(1)
    t = np.array([point.thresholds.get(c, 0.0) for c in classes])
    passes = probs >= t
    if point.normal is None:
        top = probs.argmax(1)
        return np.where(passes[np.arange(len(probs)), top], top, UNCERTAIN)
    normal = classes.index(point.normal)
    defect = passes.copy()
    defect[:, normal] = False
    best_defect = np.where(defect, probs, -1.0).argmax(1)
    return np.where(defect.any(1), best_defect, np.where(passes[:, normal], normal, UNCERTAIN))


def _highest_keeping(scores: np.ndarray, share: float) -> float:
    """The highest threshold t with at least ``share`` of ``scores`` >= t."""
    if not len(scores):
        return 0.0
    ordered = np.sort(scores)[::-1]
    return float(ordered[max(0, int(np.ceil(share * len(ordered))) - 1)])


def _lowest_flagging_at_most(scores: np.ndarray, share: float) -> float:
    """The lowest threshold t with at most ``share`` of ``scores`` >= t (just above the allowed top ones)."""
    if not len(scores):
        return 0.0
    ordered = np.sort(scores)[::-1]
    allowed = int(np.floor(share * len(ordered)))
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else 0.0


def check_normal(normal: str | None, classes: list[str]) -> None:
    if normal is not None and normal not in classes:
        raise ClassiflowError(f"evaluate.normal_class: {normal!r} is not a class (classes: {', '.join(classes)})")


def choose(probs: np.ndarray, labels: np.ndarray, classes: list[str], policy: str, target: float,
           normal: str | None) -> OperatingPoint:  # fmt: skip
    """Thresholds for ``policy`` at ``target`` from validation ``probs``/``labels`` (see the module text)."""
    check_normal(normal, classes)
    defects = [c for c in classes if c != normal]
    thresholds = dict.fromkeys(classes, 0.0)
    if policy == "max_false_alarm":
        if normal is None:
            raise ClassiflowError("evaluate.threshold_policy max_false_alarm needs evaluate.normal_class")
        ok_images = probs[labels == classes.index(normal)]
        for c in defects:
            thresholds[c] = _lowest_flagging_at_most(ok_images[:, classes.index(c)], target / len(defects))
    elif policy == "min_recall":
        top = probs.argmax(1)
        for c in defects:
            i = classes.index(c)
            mine = labels == i
            scores = probs[mine, i] if normal else probs[mine & (top == i), i]
            reachable = len(scores) / max(int(mine.sum()), 1)
            if reachable < target:
                raise ClassiflowError(
                    f"evaluate.threshold_target {target}: no threshold reaches that recall of {c} on validation "
                    f"(best {reachable:.4f}, {len(scores)} of {int(mine.sum())}); lower the target or name "
                    "evaluate.normal_class"
                )
            thresholds[c] = _highest_keeping(scores, target * mine.sum() / max(len(scores), 1))
    else:
        raise ClassiflowError(f"evaluate.threshold_policy: unknown policy {policy!r}")
    return OperatingPoint(policy, target, normal, thresholds)


def _interval(hits: int, n: int) -> list[float]:
    """Wilson 95% interval of a proportion: the sampling error of a rate measured on n images."""
    from statsmodels.stats.proportion import proportion_confint

    return [float(v) for v in proportion_confint(hits, n, alpha=0.05, method="wilson")] if n else [0.0, 1.0]


def summarize(probs: np.ndarray, labels: np.ndarray, classes: list[str], point: OperatingPoint) -> dict:
    """What the thresholds do on one split: per class recall (exact, and for defects caught = not passed as
    ``ok``) with 95% intervals, false-alarm rate, uncertain share and accuracy of the answered images."""
    answer = decide(probs, classes, point)
    normal = classes.index(point.normal) if point.normal else None
    out: dict = {"images": int(len(labels)), "uncertain": float(np.mean(answer == UNCERTAIN)) if len(labels) else 0.0}
    answered = answer != UNCERTAIN
    out["answered_accuracy"] = float(np.mean(answer[answered] == labels[answered])) if answered.any() else 0.0
    per_class = {}
    for i, c in enumerate(classes):
        mine = labels == i
        n, exact = int(mine.sum()), int(np.sum(answer[mine] == i))
        row = {"images": n, "recall": exact / n if n else 0.0, "recall_ci": _interval(exact, n)}
        if normal is not None and i != normal:
            caught = int(np.sum(answer[mine] != normal))
            row |= {"caught": caught / n if n else 0.0, "caught_ci": _interval(caught, n)}
        per_class[c] = row
    out["per_class"] = per_class
    if normal is not None:
        ok = labels == normal
        flagged = int(np.sum(answer[ok] != normal))
        out["false_alarm"] = flagged / max(int(ok.sum()), 1)
        out["false_alarm_ci"] = _interval(flagged, int(ok.sum()))
    return out


def met(summary: dict, point: OperatingPoint) -> bool:
    """Whether a split's figures meet the policy's target (recall: every defect class; false alarms: overall)."""
    if point.policy == "max_false_alarm":
        return summary["false_alarm"] <= point.target
    key = "caught" if point.normal else "recall"
    return all(row[key] >= point.target for c, row in summary["per_class"].items() if c != point.normal)
