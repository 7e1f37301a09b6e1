"""The promotion rule, kept apart from the registry so it can be read and tested on its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate_accuracy: float | None, champion_accuracy: float | None, force: bool = False) -> Decision:
    if force:
        return Decision(True, "forced")
    if candidate_accuracy is None:
        return Decision(False, "the candidate has no test_accuracy tag")
    if champion_accuracy is None:
        return Decision(True, "there is no champion yet")
    if candidate_accuracy >= champion_accuracy:
        return Decision(True, f"test accuracy {candidate_accuracy:.4f} >= champion's {champion_accuracy:.4f}")
    return Decision(False, f"test accuracy {candidate_accuracy:.4f} < champion's {champion_accuracy:.4f}")
