"""The promotion gate's decision: does a newly registered model replace the champion?

Pure: both RMSEs are measured on the same validation rows by the caller; this only applies the
policy. `champion` is what serving loads, so a tie, an unmeasurable champion or a non-finite RMSE
never moves it under `auto`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from taxiflow.core.errors import InvalidArgumentError

PromotionPolicy = Literal["auto", "never", "force"]
POLICIES: tuple[str, ...] = ("auto", "never", "force")
GateOutcome = Literal["promoted", "kept", "forced", "not-evaluated"]


@dataclass(frozen=True)
class ChampionScore:
    """The current champion, re-scored on the challenger's validation rows (rmse None: it could not be)."""

    version: str
    rmse: float | None
    error: str | None = None  # why it could not be scored


@dataclass(frozen=True)
class PromotionDecision:
    outcome: GateOutcome
    promote: bool
    reason: str
    challenger_rmse: float
    champion_version: str | None
    champion_rmse: float | None
    margin: float

    @property
    def improvement(self) -> float | None:
        """Champion RMSE minus challenger RMSE on the same rows (positive: the challenger is better)."""
        return None if self.champion_rmse is None else self.champion_rmse - self.challenger_rmse


def decide_promotion(
    challenger_rmse: float,
    champion: ChampionScore | None,
    *,
    margin: float = 0.0,
    policy: str = "auto",
    forced_reason: str | None = None,
) -> PromotionDecision:
    """Apply the gate: promote when the challenger beats the champion by at least `margin` minutes of RMSE."""
    if policy not in POLICIES:
        raise InvalidArgumentError(f"promote: expected one of {', '.join(POLICIES)}, got {policy!r}")
    if not margin >= 0 or not math.isfinite(margin):
        raise InvalidArgumentError(f"promotion margin must be a finite number >= 0, got {margin}")
    version = champion.version if champion else None
    champion_rmse = champion.rmse if champion else None

    def decision(outcome: GateOutcome, promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(outcome, promote, reason, challenger_rmse, version, champion_rmse, margin)

    if policy == "force":
        why = f"forced: {forced_reason}" if forced_reason else "forced"
        return decision("forced", True, why)
    if not math.isfinite(challenger_rmse):
        return decision("kept", False, f"challenger RMSE is {challenger_rmse}: not a usable model")
    if policy == "never":
        return decision("kept", False, "promotion disabled for this run (promote=never)")
    if champion is None:
        return decision("promoted", True, "first model: there was no champion")
    if champion_rmse is None or not math.isfinite(champion_rmse):
        return decision("not-evaluated", False, f"champion v{version} could not be scored: {champion.error or f'RMSE {champion_rmse}'}")
    improvement = champion_rmse - challenger_rmse
    if improvement > 0 and improvement >= margin:  # at least the margin, and a tie never
        return decision(
            "promoted", True, f"RMSE {challenger_rmse:.4f} beats champion v{version}'s {champion_rmse:.4f} by {improvement:.4f} (margin {margin:g})"
        )
    if improvement > 0:
        return decision(
            "kept", False, f"RMSE {challenger_rmse:.4f} beats champion v{version}'s {champion_rmse:.4f} by {improvement:.4f}, less than the margin {margin:g}"
        )
    if improvement == 0:
        return decision("kept", False, f"RMSE {challenger_rmse:.4f} ties champion v{version}: a tie keeps the champion")
    return decision("kept", False, f"RMSE {challenger_rmse:.4f} is worse than champion v{version}'s {champion_rmse:.4f} by {-improvement:.4f}")
