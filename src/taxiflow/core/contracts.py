"""Row contracts for canonical trip columns, declared once: type, range, window.

Each row that fails a check is dropped and counted under the first check it fails, so the counts
add up to the rows lost. A file whose rows all fail is refused as a whole (see preparation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from taxiflow.core.months import Month
from taxiflow.core.schema import DISTANCE, DROPOFF_AT, DROPOFF_ZONE, DURATION, PICKUP_AT, PICKUP_ZONE

MIN_ZONE, MAX_ZONE = 1, 265  # taxi_zone_lookup.csv: 263 zones plus 264/265 "Unknown"/"Outside of NYC"
MIN_DURATION_MIN, MAX_DURATION_MIN = 1.0, 60.0


@dataclass(frozen=True)
class CheckContext:
    month: Month | None
    month_window_days: int | None  # None: pickups are not checked against the file's month


@dataclass(frozen=True)
class RowCheck:
    reason: str  # stable slug: MLflow metric suffix and artifact key
    column: str
    expectation: str
    valid: Callable[[CheckContext], pl.Expr | None]  # None: the check doesn't apply in this context


def month_bounds(month: Month, margin_days: int = 0) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(month.year, month.month, 1)
    end_month = month.shift(1)
    end = dt.datetime(end_month.year, end_month.month, 1)
    margin = dt.timedelta(days=margin_days)
    return start - margin, end + margin


def _in_month_window(ctx: CheckContext) -> pl.Expr | None:
    if ctx.month is None or ctx.month_window_days is None:
        return None
    start, end = month_bounds(ctx.month, ctx.month_window_days)
    return (pl.col(PICKUP_AT) >= start) & (pl.col(PICKUP_AT) < end)


def _microseconds_to_minutes(microseconds: pl.Series) -> pl.Series:
    # As pandas' `total_seconds() / 60` rounds: two IEEE divisions in numpy. Polars' division by a
    # constant differs by an ulp on ~8% of trips, and least squares on one-hot pairs amplifies that.
    return pl.Series(microseconds.to_numpy() / 1e6 / 60, nan_to_null=True)


DURATION_MINUTES = (pl.col(DROPOFF_AT) - pl.col(PICKUP_AT)).dt.total_microseconds().map_batches(_microseconds_to_minutes, return_dtype=pl.Float64)

ROW_CHECKS: tuple[RowCheck, ...] = (
    RowCheck("pickup_at_null", PICKUP_AT, "a pickup time", lambda ctx: pl.col(PICKUP_AT).is_not_null()),
    RowCheck("dropoff_at_null", DROPOFF_AT, "a dropoff time", lambda ctx: pl.col(DROPOFF_AT).is_not_null()),
    RowCheck("pickup_zone_null", PICKUP_ZONE, "a pickup zone", lambda ctx: pl.col(PICKUP_ZONE).is_not_null()),
    RowCheck("pickup_zone_out_of_range", PICKUP_ZONE, f"zone ID in {MIN_ZONE}..{MAX_ZONE}", lambda ctx: pl.col(PICKUP_ZONE).is_between(MIN_ZONE, MAX_ZONE)),
    RowCheck("dropoff_zone_null", DROPOFF_ZONE, "a dropoff zone", lambda ctx: pl.col(DROPOFF_ZONE).is_not_null()),
    RowCheck("dropoff_zone_out_of_range", DROPOFF_ZONE, f"zone ID in {MIN_ZONE}..{MAX_ZONE}", lambda ctx: pl.col(DROPOFF_ZONE).is_between(MIN_ZONE, MAX_ZONE)),
    RowCheck("distance_null", DISTANCE, "a distance", lambda ctx: pl.col(DISTANCE).is_not_null() & pl.col(DISTANCE).is_not_nan()),
    RowCheck("distance_negative", DISTANCE, "distance >= 0", lambda ctx: pl.col(DISTANCE) >= 0),
    RowCheck("dropoff_before_pickup", DROPOFF_AT, "dropoff at or after pickup", lambda ctx: pl.col(DROPOFF_AT) >= pl.col(PICKUP_AT)),
    RowCheck("pickup_outside_month", PICKUP_AT, "pickup within the file's month (± window)", _in_month_window),
    RowCheck(
        "duration_out_of_range",
        DURATION,
        f"duration {MIN_DURATION_MIN:g}..{MAX_DURATION_MIN:g} min",
        lambda ctx: DURATION_MINUTES.is_between(MIN_DURATION_MIN, MAX_DURATION_MIN),
    ),
)
REASONS: tuple[str, ...] = tuple(c.reason for c in ROW_CHECKS)


def applicable_checks(columns: list[str], ctx: CheckContext) -> list[tuple[RowCheck, pl.Expr]]:
    """The checks whose columns are present (duration needs both timestamps) and that apply in `ctx`."""
    present = set(columns) | ({DURATION} if {PICKUP_AT, DROPOFF_AT} <= set(columns) else set())
    checks = []
    for check in ROW_CHECKS:
        expr = check.valid(ctx) if check.column in present else None
        if expr is not None:
            checks.append((check, expr))
    return checks


def first_failed_reason(checks: list[tuple[RowCheck, pl.Expr]]) -> pl.Expr:
    """Per row: the reason of the first failed check, or null when every check passes."""
    expr = pl.lit(None, dtype=pl.String)
    # Built from the last check backwards so the first check wins.
    for check, valid in reversed(checks):
        expr = pl.when(valid.fill_null(False).not_()).then(pl.lit(check.reason)).otherwise(expr)
    return expr
