from pathlib import Path

import pyarrow.parquet as pq
import pytest

from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.schema import DISTANCE, DROPOFF_AT, DROPOFF_ZONE, PICKUP_AT, PICKUP_ZONE, TRIP_LAYOUTS

CANONICAL = [PICKUP_AT, DROPOFF_AT, PICKUP_ZONE, DROPOFF_ZONE, DISTANCE]


def read_green(path: Path):
    mapping = TRIP_LAYOUTS["green"].source_columns(CANONICAL)
    return pq.read_table(path, columns=list(mapping.values())).rename_columns(list(mapping))


@pytest.fixture(scope="session")
def green_prepared(tlc_dir):
    """Prepared real green months, keyed by month."""
    cache: dict[str, PreparedTrips] = {}

    def get(month: str) -> PreparedTrips:
        if month not in cache:
            path = tlc_dir / f"green_tripdata_{month}.parquet"
            cache[month] = prepare_trips(read_green(path), source=str(path))
        return cache[month]

    return get
