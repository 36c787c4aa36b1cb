import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiflow.core.errors import DataFileError
from taxiflow.core.schema import CANONICAL_FIELDS, TRIP_LAYOUTS
from taxiflow.io.trip_files import verify_month_file
from taxiflow.io.trip_tables import read_trip_table
from tests.support.layouts import green_as

CANONICAL = list(CANONICAL_FIELDS)
# Rows per shared green file, from the shared data's README (not from the files' own metadata).
README_ROWS = {"2021-01": 76_518, "2021-02": 64_572, "2023-01": 68_211, "2023-02": 64_809, "2023-03": 72_044, "2024-01": 56_551}
GREEN_SOURCE_COLUMNS = {
    "pickup_at": "lpep_pickup_datetime",
    "dropoff_at": "lpep_dropoff_datetime",
    "pickup_zone": "PULocationID",
    "dropoff_zone": "DOLocationID",
    "distance": "trip_distance",
}


def test_reads_only_the_needed_columns_renamed(tlc_dir):
    path = tlc_dir / "green_tripdata_2023-02.parquet"
    table = read_trip_table(str(path), TRIP_LAYOUTS["green"], CANONICAL)
    assert table.column_names == CANONICAL
    assert table.num_rows == README_ROWS["2023-02"]
    assert table.schema.field("pickup_zone").type == pa.int32()  # this month's drift, coerced later
    # Each canonical column holds its source column's values (nothing swapped, e.g. pickup for dropoff).
    raw = pq.read_table(path, columns=list(GREEN_SOURCE_COLUMNS.values()))
    for canonical, source in GREEN_SOURCE_COLUMNS.items():
        assert table[canonical].equals(raw[source]), canonical


@pytest.mark.parametrize("month", sorted(README_ROWS))
def test_every_shared_green_file_verifies(tlc_dir, month):
    path = tlc_dir / f"green_tripdata_{month}.parquet"
    assert verify_month_file(path, "green", month, source=path.name) == README_ROWS[month]


@pytest.mark.parametrize("taxi", ["yellow", "fhv", "fhvhv"])
def test_other_trip_types_map_to_the_canonical_schema(tlc_dir, tmp_path, taxi):
    green = tlc_dir / "green_tripdata_2023-02.parquet"
    path = green_as(taxi, green, tmp_path / f"{taxi}_tripdata_2023-02.parquet")
    layout = TRIP_LAYOUTS[taxi]
    table = read_trip_table(str(path), layout, list(layout.columns))
    assert table.column_names == list(layout.columns)
    assert table.num_rows == README_ROWS["2023-02"]
    assert verify_month_file(path, taxi, "2023-02", source=path.name) == README_ROWS["2023-02"]
    # The values are the green rows' (compared as numbers: the layouts store zone IDs as int64 or double).
    raw = pq.read_table(green, columns=[GREEN_SOURCE_COLUMNS[c] for c in layout.columns])
    for canonical in layout.columns:
        ours, ref = table[canonical], raw[GREEN_SOURCE_COLUMNS[canonical]]
        if pa.types.is_integer(ref.type) or pa.types.is_floating(ref.type):
            ours, ref = ours.cast(pa.float64()), ref.cast(pa.float64())
        assert ours.equals(ref), canonical


def test_missing_column_names_file_column_and_what_exists(tlc_dir, tmp_path):
    table = pq.read_table(tlc_dir / "green_tripdata_2023-01.parquet").drop_columns(["DOLocationID"])
    path = tmp_path / "green_tripdata_2023-01.parquet"
    pq.write_table(table, path)
    found = ", ".join(table.column_names)
    message = f"{path}: missing column(s) DOLocationID expected in green trip files (found: {found})"
    with pytest.raises(DataFileError, match="^" + re.escape(message) + "$"):
        read_trip_table(str(path), TRIP_LAYOUTS["green"], CANONICAL)


def test_a_type_without_distance_is_refused_for_distance_features(tlc_dir):
    path = tlc_dir / "green_tripdata_2023-01.parquet"
    with pytest.raises(DataFileError, match="^" + re.escape(f"{path}: fhv trips have no distance column") + "$"):
        read_trip_table(str(path), TRIP_LAYOUTS["fhv"], CANONICAL)


def test_random_bytes_are_not_parquet(tmp_path):
    path = tmp_path / "green_tripdata_2023-01.parquet"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataFileError, match="^" + re.escape(f"{path}: not a readable parquet file (")):
        read_trip_table(str(path), TRIP_LAYOUTS["green"], CANONICAL)
