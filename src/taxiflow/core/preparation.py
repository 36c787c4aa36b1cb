"""Trips -> training rows: coerce drifting TLC types, apply row contracts, duration in minutes (1..60)."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from taxiflow.core.contracts import (
    DURATION_MINUTES,
    MAX_DURATION_MIN,
    MIN_DURATION_MIN,
    ROW_CHECKS,
    CheckContext,
    applicable_checks,
    first_failed_reason,
    month_bounds,
)
from taxiflow.core.errors import DataFileError, NoUsableRowsError
from taxiflow.core.months import Month
from taxiflow.core.schema import DISTANCE, DROPOFF_AT, DROPOFF_ZONE, DURATION, PICKUP_AT, PICKUP_ZONE

_INTEGER_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOAT_TYPES = (pl.Float32, pl.Float64)
_NUMBER_TYPES = (*_INTEGER_TYPES, *_FLOAT_TYPES, pl.Null)
_NAMED_MONTH_MIN_SHARE = 0.5  # below this share of pickups in the named month, the file is mislabelled
_CHECKS = {c.reason: c for c in ROW_CHECKS}


@dataclass(frozen=True)
class PreparedTrips:
    """One month's usable trips in canonical columns, and why the other rows were dropped."""

    frame: pl.DataFrame
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def rows_kept(self) -> int:
        return self.frame.height


def combine_prepared(parts: list[PreparedTrips]) -> PreparedTrips:
    """Several months' prepared trips as one training set: rows in month order, drops summed by reason."""
    if len(parts) == 1:
        return parts[0]
    dropped: dict[str, int] = {}
    for part in parts:
        for reason, rows in part.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + rows
    # Canonical columns (`_coerce`): every month's frame has the same schema, whatever its file stored.
    return PreparedTrips(pl.concat([p.frame for p in parts], how="vertical", rechunk=False), sum(p.rows_read for p in parts), dropped)


def _passing_rows(frame: pl.DataFrame, checks: list) -> tuple[pl.Series, dict[str, int]]:
    """Which rows pass every check, and how many fail by first failed reason (in the checks' order)."""
    valid = frame.select(pl.all_horizontal([expr.fill_null(False) for _, expr in checks]) if checks else pl.lit(True))[:, 0]
    failed: dict[str, int] = {}
    if not valid.all():
        # Reasons are computed only for the (few) failing rows.
        reasons = frame.filter(~valid).select(first_failed_reason(checks).alias("reason"))["reason"].value_counts()
        order = {check.reason: i for i, (check, _) in enumerate(checks)}
        failed = dict(sorted(zip(reasons["reason"].to_list(), reasons["count"].to_list(), strict=True), key=lambda kv: order[kv[0]]))
    return valid, failed


def _coerce(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Cast each canonical column to its one type, whatever the month stored it as."""
    exprs = []
    for name, dtype in frame.schema.items():
        if name in (PICKUP_AT, DROPOFF_AT):
            if not isinstance(dtype, pl.Datetime) and dtype != pl.Null:
                raise DataFileError(f"{source}: column {name!r} holds {dtype}, expected a timestamp")
            exprs.append(pl.col(name).cast(pl.Datetime("us")))
        elif name in (PICKUP_ZONE, DROPOFF_ZONE):
            if dtype not in _NUMBER_TYPES:
                raise DataFileError(f"{source}: column {name!r} holds {dtype}, expected integer zone IDs")
            if dtype in _FLOAT_TYPES and (frame[name] != frame[name].floor()).any():
                raise DataFileError(f"{source}: column {name!r} holds fractional values, expected integer zone IDs")
            # Out-of-int32 values become null here and are then counted as missing zones.
            exprs.append(pl.col(name).cast(pl.Int32, strict=False))
        elif name == DISTANCE:
            if dtype not in _NUMBER_TYPES:
                raise DataFileError(f"{source}: column {name!r} holds {dtype}, expected a number of miles")
            exprs.append(pl.col(name).cast(pl.Float64))
        else:
            exprs.append(pl.col(name))
    return frame.select(exprs)


def _check_named_month(frame: pl.DataFrame, month: Month, source: str) -> None:
    """A file whose pickups mostly fall outside the month in its name is mislabelled, not noisy."""
    pickups = frame[PICKUP_AT].drop_nulls()
    if pickups.len() == 0:
        return
    start, end = month_bounds(month, margin_days=1)
    share = ((pickups >= start) & (pickups < end)).mean()  # a float: the column is boolean and not empty
    if isinstance(share, float) and share < _NAMED_MONTH_MIN_SHARE:
        typical = pickups.dt.strftime("%Y-%m").mode().sort()[0]
        raise DataFileError(
            f"{source}: named for {month} but only {share:.1%} of its pickups fall in that month (most are in {typical}); expected a file of {month} trips"
        )


def describe_drops(dropped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n:,} ({_CHECKS[reason].column}: expected {_CHECKS[reason].expectation})" for reason, n in dropped.items())


def prepare_trips(
    table: pa.Table,
    *,
    source: str,
    month: Month | None = None,
    month_window_days: int | None = None,
) -> PreparedTrips:
    """Apply the row contracts and keep trips of 1..60 minutes; vectorized.

    `table` holds canonical columns (see `schema`); `source` names the file in error messages;
    `month` (the file's month) enables the mislabelled-file check and, with `month_window_days`,
    the pickup-window contract.
    """
    decoded = pl.from_arrow(table, rechunk=False)
    if not isinstance(decoded, pl.DataFrame):  # a table always decodes to a frame (an array would give a Series)
        raise TypeError(f"{source}: expected a pyarrow Table, got {type(table).__name__}")
    frame = _coerce(decoded, source)
    rows_read = frame.height
    if rows_read == 0:
        raise DataFileError(f"{source}: holds no trips (0 rows)")
    if month is not None:
        _check_named_month(frame, month, source)
    checks = applicable_checks(frame.columns, CheckContext(month, month_window_days))
    valid, dropped = _passing_rows(frame, checks)
    # Duration first, timestamps dropped, then one filter: it copies four columns, not five.
    kept = frame.with_columns(DURATION_MINUTES.alias(DURATION)).drop(PICKUP_AT, DROPOFF_AT).filter(valid)
    if kept.height == 0:
        raise NoUsableRowsError(f"{source}: no usable trips: all {rows_read:,} rows failed checks: {describe_drops(dropped)}")
    return PreparedTrips(frame=kept, rows_read=rows_read, dropped=dropped)


RIDE_INDEX = "ride_index"


@dataclass(frozen=True)
class ScorableRides:
    """The rides of one batch a model can score, and why the others can't be.

    `frame`: `ride_index` (row position in the source file), the columns read, and `duration_min`:
    the actual duration where it passes training's contracts (timestamps present, 1..60 min), else null.
    """

    frame: pl.DataFrame
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def rows_scorable(self) -> int:
        return self.frame.height


def prepare_rides(table: pa.Table | pa.RecordBatch, *, source: str, feature_columns: list[str], first_index: int = 0) -> ScorableRides:
    """Keep every ride whose `feature_columns` pass the row contracts (zone IDs, distance); vectorized.

    Unlike training, a ride's duration doesn't decide whether it is scored: only whether it counts
    towards the RMSE. Types are coerced as for training; `first_index` is the batch's first row
    position in its file.
    """
    decoded = pl.from_arrow(table, rechunk=False)
    if not isinstance(decoded, pl.DataFrame):
        raise TypeError(f"{source}: expected a pyarrow Table, got {type(table).__name__}")
    frame = _coerce(decoded, source).with_row_index(RIDE_INDEX, offset=first_index).with_columns(pl.col(RIDE_INDEX).cast(pl.Int64))
    checks = applicable_checks([c for c in feature_columns if c in frame.columns], CheckContext(None, None))
    valid, skipped = _passing_rows(frame, checks)
    kept = frame.filter(valid)
    if {PICKUP_AT, DROPOFF_AT} <= set(kept.columns):
        kept = kept.with_columns(DURATION_MINUTES.alias(DURATION)).drop(PICKUP_AT, DROPOFF_AT)
        kept = kept.with_columns(pl.when(pl.col(DURATION).is_between(MIN_DURATION_MIN, MAX_DURATION_MIN)).then(pl.col(DURATION)).alias(DURATION))
    return ScorableRides(frame=kept, rows_read=frame.height, skipped=skipped)
