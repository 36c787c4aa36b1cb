"""Bad input made from the real shared files, through `taxiflow train` with the month served over HTTP.

Each case: one specific message naming the file and what was expected, a non-zero exit, no cache
entry for the bad month, and no registered model version.
"""

from __future__ import annotations

import io
import re
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import registered_versions
from tests.support.layouts import green_as
from tests.support.servers import file_server

GOOD = "green_tripdata_2023-01.parquet"
REAL = "green_tripdata_2023-02.parquet"


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _set(table: pa.Table, name: str, column) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _rename(table: pa.Table, old: str, new: str) -> pa.Table:
    return table.rename_columns([new if c == old else c for c in table.column_names])


def _with_duplicate_zone(t: pa.Table) -> pa.Table:
    return pa.Table.from_arrays([*t.columns, t["PULocationID"]], names=[*t.column_names, "PULocationID"])


def _swapped_timestamps_message(t: pa.Table) -> str:
    """With pickup and dropoff swapped, counted here on the real rows: trips that had a positive duration
    now end before they start; zero-length ones pass that check and fail the duration check."""
    pickup, dropoff = t["lpep_pickup_datetime"], t["lpep_dropoff_datetime"]
    reversed_ = pc.sum(pc.greater(dropoff, pickup)).as_py()
    zero = pc.sum(pc.equal(dropoff, pickup)).as_py()
    assert reversed_ + zero == t.num_rows  # the real month has no trip ending before it starts
    return (
        rf"all {t.num_rows:,} rows failed checks: dropoff_before_pickup {reversed_:,} \(dropoff_at: expected dropoff at or after pickup\), "
        rf"duration_out_of_range {zero:,} \(duration_min: expected duration 1\.\.60 min\)$"
    )


N = "64,809"  # rows of green 2023-02, from the shared data's README
# case -> (bytes of the file served as the validation month, month it is served as, expected message)
CASES = {
    "truncated file": (lambda d, t: (d / REAL).read_bytes()[: (d / REAL).stat().st_size // 2], "2023-02", r"not a readable parquet file"),
    "random bytes": (lambda d, t: bytes(range(256)) * 200, "2023-02", r"not a readable parquet file"),
    "HTML error page": (
        lambda d, t: b"<html><head><title>503</title></head><body>Service Unavailable</body></html>",
        "2023-02",
        r"not a readable parquet file",
    ),
    "empty file": (lambda d, t: b"", "2023-02", r"not a readable parquet file"),
    "CSV renamed .parquet": (lambda d, t: (d / "taxi_zone_lookup.csv").read_bytes(), "2023-02", r"not a readable parquet file"),
    "zero rows": (lambda d, t: _parquet(t.slice(0, 0)), "2023-02", r"holds no trips \(0 rows\)"),
    "required column dropped": (
        lambda d, t: _parquet(t.drop_columns(["DOLocationID"])),
        "2023-02",
        r"missing column\(s\) DOLocationID expected in green trip files",
    ),
    "required column renamed": (
        lambda d, t: _parquet(_rename(t, "lpep_pickup_datetime", "pickup_time")),
        "2023-02",
        r"missing column\(s\) lpep_pickup_datetime expected .*found: .*pickup_time",
    ),
    "zone IDs as strings": (
        lambda d, t: _parquet(_set(t, "PULocationID", pc.cast(t["PULocationID"], pa.string()))),
        "2023-02",
        r"column 'pickup_zone' holds String, expected integer zone IDs",
    ),
    "fractional zone IDs": (
        lambda d, t: _parquet(_set(t, "DOLocationID", pc.add(pc.cast(t["DOLocationID"], pa.float64()), 0.5))),
        "2023-02",
        r"column 'dropoff_zone' holds fractional values",
    ),
    "zone IDs out of range": (
        lambda d, t: _parquet(_set(t, "PULocationID", pc.add(t["PULocationID"], 1000))),
        "2023-02",
        rf"no usable trips: all {N} rows failed checks: pickup_zone_out_of_range {N} \(pickup_zone: expected zone ID in 1\.\.265\)",
    ),
    "null-typed zone column": (
        lambda d, t: _parquet(_set(t, "DOLocationID", pa.nulls(t.num_rows))),
        "2023-02",
        rf"all {N} rows failed checks: dropoff_zone_null {N}",
    ),
    "negative distances": (
        lambda d, t: _parquet(_set(t, "trip_distance", pc.subtract(pc.negate(t["trip_distance"]), 0.01))),
        "2023-02",
        rf"all {N} rows failed checks: distance_negative {N} \(distance: expected distance >= 0\)",
    ),
    "distance as text": (
        lambda d, t: _parquet(_set(t, "trip_distance", pc.cast(t["trip_distance"], pa.string()))),
        "2023-02",
        r"column 'distance' holds String, expected a number of miles",
    ),
    "all-null timestamps": (
        lambda d, t: _parquet(_set(t, "lpep_pickup_datetime", pa.nulls(t.num_rows, pa.timestamp("us")))),
        "2023-02",
        rf"all {N} rows failed checks: pickup_at_null {N} \(pickup_at: expected a pickup time\)",
    ),
    "timestamps as text": (
        lambda d, t: _parquet(_set(t, "lpep_dropoff_datetime", pc.cast(t["lpep_dropoff_datetime"], pa.string()))),
        "2023-02",
        r"column 'dropoff_at' holds String, expected a timestamp",
    ),
    "dropoff before pickup": (
        lambda d, t: _parquet(_set(_set(t, "lpep_pickup_datetime", t["lpep_dropoff_datetime"]), "lpep_dropoff_datetime", t["lpep_pickup_datetime"])),
        "2023-02",
        _swapped_timestamps_message,
    ),
    "every trip over an hour": (
        lambda d, t: _parquet(_set(t, "lpep_dropoff_datetime", pc.add(t["lpep_pickup_datetime"], pa.scalar(7_200_000_000, pa.duration("us"))))),
        "2023-02",
        rf"all {N} rows failed checks: duration_out_of_range {N} \(duration_min: expected duration 1\.\.60 min\)",
    ),
    "duplicate columns": (lambda d, t: _parquet(_with_duplicate_zone(t)), "2023-02", r"column\(s\) PULocationID appear more than once"),
    "wrong month in the name": (
        lambda d, t: (d / REAL).read_bytes(),
        "2023-05",
        r"named for 2023-05 but only 0\.0% of its pickups fall in that month \(most are in 2023-02\)",
    ),
    "yellow file under a green name": (
        lambda d, t: None,
        "2023-02",
        r"missing column\(s\) lpep_pickup_datetime, lpep_dropoff_datetime expected in green trip files \(found: VendorID, tpep_pickup_datetime",
    ),
    "another table entirely": (
        lambda d, t: _parquet(pacsv.read_csv(d / "taxi_zone_lookup.csv")),
        "2023-02",
        r"missing column\(s\) lpep_pickup_datetime, .* expected in green trip files \(found: LocationID, Borough, Zone, service_zone\)",
    ),
}


@pytest.fixture(scope="module")
def real_table(tlc_dir):
    return pq.read_table(tlc_dir / REAL)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_month_is_refused(case, run_taxiflow, tlc_dir, tmp_path, state_dir, real_table):
    make, month, message = CASES[case]
    if callable(message):
        message = message(real_table)
    site = tmp_path / "site" / "trip-data"
    site.mkdir(parents=True)
    shutil.copy(tlc_dir / GOOD, site / GOOD)
    bad_name = f"green_tripdata_{month}.parquet"
    if case == "yellow file under a green name":
        green_as("yellow", tlc_dir / REAL, site / bad_name)
    else:
        (site / bad_name).write_bytes(make(tlc_dir, real_table))

    with file_server(tmp_path / "site") as base_url:
        result = run_taxiflow(
            "train",
            "--source",
            "tlc",
            "--tlc-base-url",
            base_url,
            "--model",
            "linear",
            "--train-month",
            "2023-01",
            "--val-month",
            month,
            env={"TAXIFLOW_DOWNLOAD_RETRIES": "0"},
        )
    assert result.returncode == 1, result.stderr[-2000:]
    error_line = [line for line in result.stderr.splitlines() if line.startswith("taxiflow: error: ")]
    assert len(error_line) == 1, result.stderr[-2000:]
    assert re.search(re.escape(bad_name) + ".*" + message, error_line[0]), error_line[0]
    cache = state_dir / "cache"
    # Lock files stay (deleting them would race other runs); no data, sidecar or partial file of the
    # bad month may: the only files left are the good month and its sidecar, byte for byte the source.
    cached = sorted(p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")
    assert [p.name for p in cached] == [GOOD, f"{GOOD}.json"], "only the good month may be cached"
    assert cached[0].read_bytes() == (tlc_dir / GOOD).read_bytes()
    assert registered_versions(state_dir) == []


def test_corpus_has_at_least_twenty_cases():
    assert len(CASES) >= 20
