"""Backfills, without Prefect: which pairs of months a range holds, which of them run, and what came of them.

A pair trains on month M and validates on M+1. Whether it runs is decided from facts the caller
looked up (an identical committed version, the state of the pair's last run), so the rules are
tested here without any server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taxiflow.core.errors import TaxiflowError
from taxiflow.core.months import Month

BackfillMode = Literal["missing", "failed", "all"]
FAILED_STATES = ("FAILED", "CRASHED", "CANCELLED")


@dataclass(frozen=True)
class MonthPair:
    train_month: str
    val_month: str

    def __str__(self) -> str:
        return f"{self.train_month}->{self.val_month}"


def month_pairs(first: Month, last: Month) -> list[MonthPair]:
    """Consecutive pairs from `first` to `last` inclusive: n months give n-1 pairs."""
    count = (last.year - first.year) * 12 + last.month - first.month
    return [MonthPair(str(first.shift(i)), str(first.shift(i + 1))) for i in range(count)]


@dataclass(frozen=True)
class PairFacts:
    """What is known about a pair before the backfill runs it."""

    identical_version: str | None  # a committed version trained on these exact inputs
    inputs_known: bool  # both months' data digests are known without downloading anything
    last_state: str | None  # the state of the pair's last run (Prefect's state type), None if never run


@dataclass(frozen=True)
class PairPlan:
    pair: MonthPair
    run: bool
    reason: str


def plan_pair(pair: MonthPair, mode: BackfillMode, facts: PairFacts) -> PairPlan:
    if mode == "all":
        return PairPlan(pair, True, "mode all: trains again whatever exists")
    if mode == "failed":
        if facts.last_state in FAILED_STATES:
            return PairPlan(pair, True, f"its last run {facts.last_state.lower()}")
        return PairPlan(pair, False, f"mode failed: its last run {'completed' if facts.last_state == 'COMPLETED' else facts.last_state or 'never happened'}")
    if facts.identical_version is not None:
        return PairPlan(pair, False, f"up to date: v{facts.identical_version} was trained on identical inputs")
    if not facts.inputs_known:
        return PairPlan(pair, True, "a month is not fetched yet: trains unless an identical version turns up once it is")
    return PairPlan(pair, True, "no committed version was trained on these inputs")


# Outcome statuses, as the parent's table shows them.
TRAINED, UP_TO_DATE, FAILED, SKIPPED = "trained", "up to date", "failed", "skipped"


@dataclass(frozen=True)
class PairOutcome:
    pair: MonthPair
    status: str
    rmse: float | None = None
    version: str | None = None
    promoted: bool = False
    detail: str = ""

    def row(self) -> dict[str, object]:
        return {
            "pair": str(self.pair),
            "status": self.status,
            "rmse": None if self.rmse is None else round(self.rmse, 4),
            "version": self.version or "",
            "promoted": self.promoted,
            "detail": self.detail,
        }


def outcome_of_run(pair: MonthPair, summary: dict) -> PairOutcome:
    """A pair's outcome from its `train` summary (a cached summary is the identical version's, returned without training)."""
    cached = bool(summary.get("cached"))
    promoted = bool(summary.get("promoted")) and not cached
    detail = f"v{summary['model_version']} trained on identical inputs earlier" if cached else f"gate: {summary.get('gate')}"
    return PairOutcome(pair, UP_TO_DATE if cached else TRAINED, float(summary["rmse"]), str(summary["model_version"]), promoted, detail)


def failure_summary(outcomes: list[PairOutcome]) -> str | None:
    """One line naming each failed pair and why, or None if none failed."""
    failed = [o for o in outcomes if o.status == FAILED]
    if not failed:
        return None
    return f"{len(failed)} of {len(outcomes)} pair(s) failed: " + "; ".join(f"{o.pair}: {o.detail}" for o in failed)


class BackfillFailedError(TaxiflowError):
    """Some pairs failed (the others ran): the message names each; `result` is the whole table."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result
