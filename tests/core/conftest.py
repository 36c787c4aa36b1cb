from pathlib import Path

import pytest

from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.schema import CANONICAL_FIELDS, TRIP_LAYOUTS
from taxiflow.io.trip_tables import read_trip_table


def read_green(path: Path):
    return read_trip_table(str(path), TRIP_LAYOUTS["green"], list(CANONICAL_FIELDS))


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
