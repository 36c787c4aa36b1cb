"""Trips -> training rows: coerce drifting TLC types, compute duration in minutes, keep 1..60."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from taxiflow.core.errors import DataFileError, NoUsableRowsError
from taxiflow.core.schema import DISTANCE, DROPOFF_AT, DROPOFF_ZONE, DURATION, PICKUP_AT, PICKUP_ZONE

MIN_DURATION_MIN = 1.0
MAX_DURATION_MIN = 60.0

_ZONE_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Float32, pl.Float64, pl.Null)
_NUMBER_TYPES = _ZONE_TYPES


@dataclass(frozen=True)
class PreparedTrips:
    """One month's usable trips in canonical columns, plus how many rows the filters removed."""

    frame: pl.DataFrame
    rows_read: int

    @property
    def rows_kept(self) -> int:
        return self.frame.height


def _coerce(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Cast each canonical column to its one type, whatever the month stored it as."""
    exprs = []
    for name, dtype in frame.schema.items():
        if name in (PICKUP_AT, DROPOFF_AT):
            if not isinstance(dtype, pl.Datetime):
                raise DataFileError(f"{source}: column {name!r} holds {dtype}, expected a timestamp")
            exprs.append(pl.col(name).cast(pl.Datetime("us")))
        elif name in (PICKUP_ZONE, DROPOFF_ZONE):
            if dtype not in _ZONE_TYPES:
                raise DataFileError(f"{source}: column {name!r} holds {dtype}, expected integer zone IDs")
            exprs.append(pl.col(name).cast(pl.Int32, strict=False))
        elif name == DISTANCE:
            if dtype not in _NUMBER_TYPES:
                raise DataFileError(f"{source}: column {name!r} holds {dtype}, expected a number of miles")
            exprs.append(pl.col(name).cast(pl.Float64))
        else:
            exprs.append(pl.col(name))
    return frame.select(exprs)


def prepare_trips(table: pa.Table, *, source: str) -> PreparedTrips:
    """Duration in minutes from pickup/dropoff, keep MIN..MAX minutes; vectorized.

    `table` holds canonical columns (see `schema`); `source` names the file in error messages.
    """
    frame = _coerce(pl.from_arrow(table, rechunk=False), source)
    rows_read = frame.height
    duration = (pl.col(DROPOFF_AT) - pl.col(PICKUP_AT)).dt.total_microseconds() / 60_000_000
    kept = (
        frame.with_columns(duration.alias(DURATION))
        .filter(pl.col(DURATION).is_between(MIN_DURATION_MIN, MAX_DURATION_MIN))
        .drop(PICKUP_AT, DROPOFF_AT)
    )
    if kept.height == 0:
        raise NoUsableRowsError(
            f"{source}: no trips left after keeping durations of {MIN_DURATION_MIN:g}..{MAX_DURATION_MIN:g} minutes "
            f"({rows_read} rows read)"
        )
    return PreparedTrips(frame=kept, rows_read=rows_read)
