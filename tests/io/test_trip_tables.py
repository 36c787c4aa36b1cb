import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiflow.core.errors import DataFileError
from taxiflow.core.schema import CANONICAL_FIELDS, TRIP_LAYOUTS
from taxiflow.io.trip_files import verify_month_file
from taxiflow.io.trip_tables import read_trip_table
from tests.support.layouts import green_as

CANONICAL = list(CANONICAL_FIELDS)


def test_reads_only_the_needed_columns_renamed(tlc_dir):
    table = read_trip_table(str(tlc_dir / "green_tripdata_2023-02.parquet"), TRIP_LAYOUTS["green"], CANONICAL)
    assert table.column_names == CANONICAL
    assert table.num_rows == 64_809
    assert table.schema.field("pickup_zone").type == pa.int32()  # this month's drift, coerced later


@pytest.mark.parametrize("month", ["2021-01", "2021-02", "2023-01", "2023-02", "2023-03", "2024-01"])
def test_every_shared_green_file_verifies(tlc_dir, month):
    path = tlc_dir / f"green_tripdata_{month}.parquet"
    assert verify_month_file(path, "green", month, source=path.name) == pq.ParquetFile(path).metadata.num_rows


@pytest.mark.parametrize("taxi", ["yellow", "fhv", "fhvhv"])
def test_other_trip_types_map_to_the_canonical_schema(tlc_dir, tmp_path, taxi):
    path = green_as(taxi, tlc_dir / "green_tripdata_2023-02.parquet", tmp_path / f"{taxi}_tripdata_2023-02.parquet")
    layout = TRIP_LAYOUTS[taxi]
    table = read_trip_table(str(path), layout, list(layout.columns))
    assert table.column_names == list(layout.columns)
    assert table.num_rows == 64_809
    assert verify_month_file(path, taxi, "2023-02", source=path.name) == 64_809


def test_missing_column_names_file_column_and_what_exists(tlc_dir, tmp_path):
    table = pq.read_table(tlc_dir / "green_tripdata_2023-01.parquet").drop_columns(["DOLocationID"])
    path = tmp_path / "green_tripdata_2023-01.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataFileError, match=rf"{path}: missing column\(s\) DOLocationID expected in green trip files \(found: VendorID"):
        read_trip_table(str(path), TRIP_LAYOUTS["green"], CANONICAL)


def test_a_type_without_distance_is_refused_for_distance_features(tlc_dir):
    with pytest.raises(DataFileError, match="fhv trips have no distance column"):
        read_trip_table(str(tlc_dir / "green_tripdata_2023-01.parquet"), TRIP_LAYOUTS["fhv"], CANONICAL)


def test_random_bytes_are_not_parquet(tmp_path):
    path = tmp_path / "green_tripdata_2023-01.parquet"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataFileError, match=rf"{path}: not a readable parquet file"):
        read_trip_table(str(path), TRIP_LAYOUTS["green"], CANONICAL)
