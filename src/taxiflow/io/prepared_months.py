"""A month file's prepared trips, through the prepared-trips cache: what the `train` flow's prepare step and a Dask worker's partition both call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from taxiflow.core.features import required_columns
from taxiflow.core.identity import prepared_trips_key
from taxiflow.core.months import Month
from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.schema import DROPOFF_AT, PICKUP_AT, layout_for
from taxiflow.io.month_cache import TripFile
from taxiflow.io.prepared_cache import PreparedTripsCache
from taxiflow.io.trip_tables import read_trip_table


def prepared_columns(features: tuple[str, ...]) -> list[str]:
    """The columns a month is read with: pickup and dropoff times for the duration, and the features' inputs."""
    return [PICKUP_AT, DROPOFF_AT, *required_columns(features)]


def prepare_trip_file(
    trip_file: TripFile,
    features: tuple[str, ...],
    month_window_days: int | None,
    prepared_dir: str,
    refresh: bool,
    *,
    read: Callable[[list[str]], pa.Table] | None = None,
) -> tuple[PreparedTrips, bool, str]:
    """(the month's prepared trips, whether they came from the cache, their cache key).

    `read` reads the month's columns when it is not a parquet file (a PostgreSQL load); by default the file at `trip_file.path`.
    """
    columns = prepared_columns(features)

    def prepare() -> PreparedTrips:
        table = read(columns) if read is not None else read_trip_table(trip_file.path, layout_for(trip_file.taxi), columns)
        return prepare_trips(table, source=trip_file.path, month=Month.parse(trip_file.month), month_window_days=month_window_days)

    key = prepared_trips_key(trip_file.taxi, trip_file.month, trip_file.sha256, columns, month_window_days)
    cache = PreparedTripsCache(Path(prepared_dir))
    prepared, hit = cache.get_or_prepare(key, taxi=trip_file.taxi, month=trip_file.month, data_identity=trip_file.sha256, prepare=prepare, refresh=refresh)
    return prepared, hit, key
