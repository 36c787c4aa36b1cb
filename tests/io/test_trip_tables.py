import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiflow.core.errors import DataFileError
from taxiflow.core.schema import TRIP_LAYOUTS
from taxiflow.io.trip_tables import read_trip_table

CANONICAL = ["pickup_at", "dropoff_at", "pickup_zone", "dropoff_zone", "distance"]


def test_reads_only_the_needed_columns_renamed(tlc_dir):
    table = read_trip_table(str(tlc_dir / "green_tripdata_2023-02.parquet"), TRIP_LAYOUTS["green"], CANONICAL)
    assert table.column_names == CANONICAL
    assert table.num_rows == 64_809
    assert table.schema.field("pickup_zone").type == pa.int32()  # this month's drift, coerced later


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
