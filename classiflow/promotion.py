"""The promotion gate, kept apart from the registry so it can be read and tested on its own.

Two models scored on the same test split are compared image by image: the images both get
right or both get wrong say nothing about which model is better, only the discordant pairs
do. McNemar's test on those pairs tells a real difference from the noise of a small test set,
where comparing two accuracies alone would let a lucky model replace a better one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from classiflow.errors import ClassiflowError

Policy = Literal["not_worse", "better"]
# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_BELOW = 25


@dataclass(frozen=True)
class Comparison:
    """McNemar's test of the candidate against the champion on the same images."""

    n: int
    candidate_accuracy: float
    champion_accuracy: float
    b: int  # the candidate right where the champion is wrong
    c: int  # the champion right where the candidate is wrong
    p_value: float
    test: Literal["exact", "chi2"]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    policy: str
    alpha: float
    candidate_accuracy: float | None = None
    champion_accuracy: float | None = None
    p_value: float | None = None
    b: int | None = None
    c: int | None = None
    n: int | None = None
    test: str | None = None
    candidate_latency_ms: float | None = None
    max_latency_ms: float | None = None
    forced: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def correctness(actual: list[str], predicted: list[str]) -> np.ndarray:
    if len(actual) != len(predicted):
        raise ClassiflowError(f"{len(actual)} labels but {len(predicted)} predictions")
    return np.asarray(actual, dtype=object) == np.asarray(predicted, dtype=object)


def compare(candidate_correct, champion_correct) -> Comparison:
    from statsmodels.stats.contingency_tables import mcnemar

    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    if cand.ndim != 1 or cand.shape != champ.shape:
        raise ClassiflowError(
            f"the two models were scored on different test sets ({cand.size} vs {champ.size} images); "
            "they cannot be compared image by image"
        )
    if cand.size == 0:
        raise ClassiflowError("the test set is empty; there is nothing to compare")
    b = int(np.sum(cand & ~champ))
    c = int(np.sum(~cand & champ))
    both = int(np.sum(cand & champ))
    neither = int(np.sum(~cand & ~champ))
    exact = b + c < EXACT_BELOW
    # b + c == 0 is exact (p = 1); the chi-square branch never sees it.
    result = mcnemar([[both, c], [b, neither]], exact=exact, correction=True)
    return Comparison(
        n=int(cand.size),
        candidate_accuracy=float(cand.mean()),
        champion_accuracy=float(champ.mean()),
        b=b,
        c=c,
        p_value=float(min(1.0, result.pvalue)),
        test="exact" if exact else "chi2",
    )


def _gate(
    comparison: Comparison | None,
    has_champion: bool,
    policy: Policy,
    alpha: float,
    max_latency_ms: float | None,
    candidate_latency_ms: float | None,
    operating_point: str | None = None,
) -> tuple[bool, str]:
    # The operating point and the latency budget are hard limits: even the first champion must meet them.
    if operating_point is not None and operating_point != "met":
        return False, "it missed its operating point on test (evaluate.threshold_policy; see its model card)"
    if max_latency_ms is not None:
        if candidate_latency_ms is None:
            return False, (
                f"a latency budget of {max_latency_ms:g} ms is set but the candidate has no "
                "latency_ms_batch1 tag (run the export stage)"
            )
        if candidate_latency_ms > max_latency_ms:
            return False, f"latency {candidate_latency_ms:.3f} ms exceeds the budget of {max_latency_ms:g} ms"
    if not has_champion:
        return True, "there is no champion yet"
    if comparison is None:
        return False, "the candidate was not compared with the champion"
    cand, champ, p = comparison.candidate_accuracy, comparison.champion_accuracy, comparison.p_value
    accuracies = f"accuracy {cand:.4f} vs champion's {champ:.4f}, McNemar p={p:.4g}"
    significant = p < alpha
    if policy == "not_worse":
        if cand < champ and significant:
            return False, f"significantly less accurate ({accuracies} < alpha {alpha:g})"
        if cand < champ:
            return True, f"not significantly worse ({accuracies} >= alpha {alpha:g})"
        return True, f"at least as accurate ({accuracies})"
    if policy == "better":
        if cand > champ and significant:
            return True, f"significantly more accurate ({accuracies} < alpha {alpha:g})"
        if cand > champ:
            return False, f"more accurate but not significantly ({accuracies} >= alpha {alpha:g})"
        return False, f"not more accurate ({accuracies})"
    raise ClassiflowError(f"unknown promotion policy {policy!r} (expected not_worse or better)")


def decide(
    candidate_correct=None,
    champion_correct=None,
    *,
    policy: Policy = "not_worse",
    alpha: float = 0.05,
    max_latency_ms: float | None = None,
    candidate_latency_ms: float | None = None,
    has_champion: bool | None = None,
    force: bool = False,
    operating_point: str | None = None,
) -> Decision:
    """Apply the gate to per-image correctness (bool arrays in the same image order).

    ``has_champion`` defaults to whether ``champion_correct`` was given; pass True with no
    arrays when the comparison could not be made (only ``force`` then promotes). ``operating_point`` is the
    candidate's ``met``/``missed`` tag (None: it has no threshold policy); a miss is refused.
    """
    if has_champion is None:
        has_champion = champion_correct is not None
    comparison = None
    if candidate_correct is not None and champion_correct is not None:
        comparison = compare(candidate_correct, champion_correct)
    promote, reason = _gate(
        comparison, has_champion, policy, alpha, max_latency_ms, candidate_latency_ms, operating_point
    )
    if force:
        reason = f"forced (the gate alone would have {'promoted' if promote else 'refused'}: {reason})"
        promote = True
    cand_acc = comparison.candidate_accuracy if comparison else None
    if cand_acc is None and candidate_correct is not None and len(candidate_correct):
        cand_acc = float(np.asarray(candidate_correct, dtype=bool).mean())
    return Decision(
        promote=promote,
        reason=reason,
        policy=policy,
        alpha=alpha,
        candidate_accuracy=cand_acc,
        champion_accuracy=comparison.champion_accuracy if comparison else None,
        p_value=comparison.p_value if comparison else None,
        b=comparison.b if comparison else None,
        c=comparison.c if comparison else None,
        n=comparison.n if comparison else None,
        test=comparison.test if comparison else None,
        candidate_latency_ms=candidate_latency_ms,
        max_latency_ms=max_latency_ms,
        forced=force,
    )
