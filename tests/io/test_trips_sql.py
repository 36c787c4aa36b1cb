"""Trips in PostgreSQL (io/trips_sql.py) against a real server with password authentication.

Real green months go in and must come back as their files' rows: the same values in the same order,
so `prepare_trips` (and every model after it) sees what it sees when reading the parquet file.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pyarrow as pa
import pytest
from pydantic import SecretStr

from taxiflow.core.errors import DataFileError, InvalidArgumentError, MonthNotAvailableError, TaxiflowError
from taxiflow.core.months import Month
from taxiflow.core.preparation import prepare_trips
from taxiflow.core.schema import CANONICAL_FIELDS, PICKUP_AT, TRIP_LAYOUTS
from taxiflow.io.failpoints import ENV as FAILPOINTS_ENV
from taxiflow.io.failpoints import InjectedFailure
from taxiflow.io.month_cache import TripFile, file_sha256
from taxiflow.io.trip_tables import read_trip_table
from taxiflow.io.trips_sql import LOAD_FAILPOINT, load_month, load_months, loaded_month, postgres_url, read_month
from taxiflow.settings import TaxiflowSettings
from tests.support.postgres import execute, query, trips_postgres

pytestmark = pytest.mark.servers

GREEN = TRIP_LAYOUTS["green"]
COLUMNS = list(CANONICAL_FIELDS)


@pytest.fixture(scope="module")
def server():
    with trips_postgres() as running:
        yield running


@pytest.fixture(scope="module")
def january(tlc_dir) -> pa.Table:
    return read_trip_table(str(tlc_dir / "green_tripdata_2023-01.parquet"), GREEN, COLUMNS)


@pytest.fixture(scope="module")
def loaded_january(server, january, tlc_dir):
    """green 2023-01 loaded once for the tests that only read it."""
    path = tlc_dir / "green_tripdata_2023-01.parquet"
    return load_month(server.url(), "green", "2023-01", january, source_sha256=file_sha256(path), source_origin="local")


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def test_a_month_reads_back_as_its_file_rows_values_and_order(server, january, loaded_january):
    table, load = read_month(server.url(), "green", "2023-01", COLUMNS)

    assert load == loaded_january == loaded_month(server.url(), "green", "2023-01")
    assert load.rows == table.num_rows == january.num_rows == 68_211
    assert table.column_names == COLUMNS
    # Every row of the file, in its order, in the table's types (what preparation coerces to anyway).
    assert table.equals(january.cast(table.schema))
    # Stray pickups (other months, back to 2009 in some files) stay with their file's month.
    pickups = pl.from_arrow(table).get_column(PICKUP_AT)
    assert not pickups.is_between(dt.datetime(2023, 1, 1), dt.datetime(2023, 2, 1), closed="left").all()

    from_file = prepare_trips(january, source="file", month=Month(2023, 1))
    from_sql = prepare_trips(table, source="sql", month=Month(2023, 1))
    assert from_sql.frame.equals(from_file.frame) and from_sql.frame.height == 65_946
    assert (from_sql.rows_read, from_sql.dropped) == (from_file.rows_read, from_file.dropped)


def test_only_the_requested_columns_come_back(server, loaded_january):
    table, load = read_month(server.url(), "green", "2023-01", ["pickup_zone", "distance"])

    assert table.column_names == ["pickup_zone", "distance"] and table.num_rows == load.rows == 68_211
    assert table.schema.field("pickup_zone").metadata is None  # plain fields, as read from a file

    with pytest.raises(InvalidArgumentError, match="columns: expected some of"):
        read_month(server.url(), "green", "2023-01", ["PULocationID"])


def test_reloading_a_month_replaces_it(server, tlc_dir):
    february = read_trip_table(str(tlc_dir / "green_tripdata_2023-02.parquet"), GREEN, COLUMNS)
    url = server.url()
    first = load_month(url, "green", "2023-02", february, source_sha256="a" * 64, source_origin="local")
    again = load_month(url, "green", "2023-02", february, source_sha256="a" * 64, source_origin="local")
    assert again.load_id != first.load_id and again.rows == first.rows == 64_809
    table, load = read_month(url, "green", "2023-02", COLUMNS)
    assert load == again and table.equals(february.cast(table.schema))  # no row twice

    smaller = load_month(url, "green", "2023-02", february.slice(100, 1_000), source_sha256="b" * 64, source_origin="local")
    table, load = read_month(url, "green", "2023-02", COLUMNS)
    assert load == smaller and table.num_rows == 1_000  # replaced, not appended to
    assert table.column("distance").equals(february.column("distance").slice(100, 1_000))
    assert query(server, "SELECT count(*) FROM taxiflow_green_trips WHERE source_month = '2023-02-01'") == [(1_000,)]
    assert query(server, "SELECT load_id, rows, source_sha256 FROM taxiflow_trip_loads WHERE taxi = 'green' AND month = '2023-02'") == [
        (smaller.load_id, 1_000, "b" * 64)
    ]


def test_a_failed_load_leaves_the_month_as_it_was(server, tlc_dir, monkeypatch):
    march = read_trip_table(str(tlc_dir / "green_tripdata_2023-03.parquet"), GREEN, COLUMNS)
    url = server.url()
    before = load_month(url, "green", "2023-03", march, source_sha256="c" * 64, source_origin="local")

    # Fails after the old rows were truncated, the new ones copied in and the record replaced: all rolled back.
    monkeypatch.setenv(FAILPOINTS_ENV, LOAD_FAILPOINT)
    with pytest.raises(InjectedFailure):
        load_month(url, "green", "2023-03", march.slice(0, 10), source_sha256="d" * 64, source_origin="local")
    monkeypatch.delenv(FAILPOINTS_ENV)
    table, load = read_month(url, "green", "2023-03", COLUMNS)
    assert load == before and table.equals(march.cast(table.schema))

    # A column the table can't hold is refused before anything is written.
    bad = march.slice(0, 10).set_column(2, "pickup_zone", pa.array(["7"] * 10))
    with pytest.raises(DataFileError, match="column 'pickup_zone' holds string, expected integer zone IDs"):
        load_month(url, "green", "2023-03", bad, source_sha256="e" * 64, source_origin="local")
    assert read_month(url, "green", "2023-03", ["distance"])[1] == before


def test_a_wrong_password_is_named_and_no_password_is_shown(server, loaded_january):
    wrong = "wrong-" + secrets.token_hex(8)
    with pytest.raises(TaxiflowError) as excinfo:
        read_month(server.url(password=wrong), "green", "2023-01", COLUMNS)
    message = _message(excinfo)
    assert message == f"PostgreSQL at 127.0.0.1:{server.port}/taxiflow refused user taxiflow: password authentication failed"
    assert wrong not in message and server.password not in message


def test_an_unreachable_server_and_a_missing_database_are_named(server):
    with pytest.raises(TaxiflowError) as unreachable:
        read_month(f"postgresql://taxiflow:{server.password}@127.0.0.1:1/taxiflow", "green", "2023-01", COLUMNS)
    assert _message(unreachable).startswith("PostgreSQL at 127.0.0.1:1/taxiflow is not reachable (") and "Connection refused" in _message(unreachable)
    with pytest.raises(TaxiflowError) as no_database:
        read_month(server.url(database="nowhere"), "green", "2023-01", COLUMNS)
    assert _message(no_database) == f"PostgreSQL at 127.0.0.1:{server.port}: database 'nowhere' does not exist; expected the database named in the URL"
    for excinfo in (unreachable, no_database):
        assert server.password not in _message(excinfo)


@pytest.mark.parametrize("reader", ["read_month", "loaded_month"])
def test_a_missing_table_and_a_month_not_loaded_say_how_to_load_it(server, loaded_january, reader):
    def read(taxi: str, month: str) -> object:
        return read_month(server.url(), taxi, month, COLUMNS) if reader == "read_month" else loaded_month(server.url(), taxi, month)

    with pytest.raises(MonthNotAvailableError) as no_table:
        read("yellow", "2023-01")
    assert _message(no_table) == (
        f"no table taxiflow_yellow_trips in PostgreSQL at 127.0.0.1:{server.port}/taxiflow: "
        "load months with `taxiflow data load-sql --taxi yellow --months 2023-01`"
    )
    with pytest.raises(MonthNotAvailableError) as no_month:
        read("green", "2024-01")
    assert _message(no_month) == (
        f"green 2024-01 is not loaded in taxiflow_green_trips at 127.0.0.1:{server.port}/taxiflow: "
        "load months with `taxiflow data load-sql --taxi green --months 2024-01`"
    )


def test_a_database_with_nothing_loaded_says_how_to_load(server):
    execute(server, "CREATE DATABASE empty_trips", autocommit=True)
    with pytest.raises(MonthNotAvailableError, match="^no table taxiflow_green_trips in PostgreSQL at .*/empty_trips: load months with"):
        loaded_month(server.url(database="empty_trips"), "green", "2023-01")


def test_a_month_loaded_empty_is_an_error_on_reading(server, january):
    empty = load_month(server.url(), "green", "2023-07", january.slice(0, 0), source_sha256="f" * 64, source_origin="local")
    assert empty.rows == 0
    for read in (lambda: read_month(server.url(), "green", "2023-07", COLUMNS), lambda: loaded_month(server.url(), "green", "2023-07")):
        with pytest.raises(DataFileError, match=f"green 2023-07 .*: load {empty.load_id} holds no trips \\(0 rows\\); expected a month with trips"):
            read()


def test_a_trip_type_without_distance_gets_a_table_without_it(server):
    """FHV records have no distance: the table has no such column, and asking for it is a data error."""
    fhv = pa.table(
        {
            "pickup_at": pa.array([dt.datetime(2023, 1, 1, 8), dt.datetime(2023, 1, 2, 9), None], pa.timestamp("ns")),
            "dropoff_at": pa.array([dt.datetime(2023, 1, 1, 8, 20), dt.datetime(2023, 1, 2, 9, 5), None], pa.timestamp("ns")),
            "pickup_zone": pa.array([1.0, None, 265.0]),  # FHV zones are published as doubles
            "dropoff_zone": pa.array([2, 3, 3_000_000_000], pa.int64()),  # out of int32: null, as preparation makes it
        }
    )
    load_month(server.url(), "fhv", "2023-01", fhv, source_sha256="0" * 64, source_origin="local")
    table, _ = read_month(server.url(), "fhv", "2023-01", ["pickup_at", "pickup_zone", "dropoff_zone"])
    assert table.column("pickup_zone").to_pylist() == [1, None, 265] and table.column("dropoff_zone").to_pylist() == [2, 3, None]
    assert table.column("pickup_at").to_pylist() == [dt.datetime(2023, 1, 1, 8), dt.datetime(2023, 1, 2, 9), None]
    with pytest.raises(DataFileError, match="fhv trips have no distance column"):
        read_month(server.url(), "fhv", "2023-01", ["distance"])


def test_load_months_loads_each_verified_file_as_its_month(server, tlc_dir):
    files = [
        TripFile("green", month, str(path), file_sha256(path), path.stat().st_size, 0, "local")
        for month, path in (("2021-01", tlc_dir / "green_tripdata_2021-01.parquet"), ("2021-02", tlc_dir / "green_tripdata_2021-02.parquet"))
    ]
    loads = load_months(server.url(), "green", files)

    assert [(load.month, load.rows, load.source_sha256) for load in loads] == [("2021-01", 76_518, files[0].sha256), ("2021-02", 64_572, files[1].sha256)]
    table, load = read_month(server.url(), "green", "2021-02", ["distance"])
    assert load == loads[1] and table.column("distance").equals(read_trip_table(files[1].path, GREEN, ["distance"]).column("distance"))
    with pytest.raises(InvalidArgumentError, match="files of another trip type: yellow 2021-01"):
        load_months(server.url(), "green", [TripFile("yellow", "2021-01", files[0].path, files[0].sha256, 1, 0, "local")])


def test_the_url_comes_from_the_setting_and_is_checked_without_being_shown(monkeypatch):
    monkeypatch.setenv("TAXIFLOW_POSTGRES_URL", "postgres://u:p@db:5432/trips")
    settings = TaxiflowSettings()
    assert settings.postgres_secret_block == "taxi-postgres" and "u:p@" not in repr(settings)
    assert postgres_url(settings.postgres_url, settings.postgres_secret_block) == "postgres://u:p@db:5432/trips"
    assert postgres_url(SecretStr(" postgresql://u:p@db/trips "), "unused") == "postgresql://u:p@db/trips"
    with pytest.raises(InvalidArgumentError) as excinfo:
        postgres_url(SecretStr("mysql://u:s3cret-value@db/trips"), "unused")
    assert _message(excinfo) == "TAXIFLOW_POSTGRES_URL: expected postgresql://user:password@host:port/database (or postgres://), got a mysql:// URL"


def test_the_url_comes_from_a_prefect_secret_block_when_the_setting_is_unset(prefect_api, server):
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    block = "taxi-postgres-" + secrets.token_hex(4)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with pytest.raises(TaxiflowError) as missing:
            postgres_url(None, block)
        Secret(value=server.url()).save(block, overwrite=True)
        url = postgres_url(None, block)
    assert url == server.url()
    assert _message(missing) == (
        f"no PostgreSQL URL: TAXIFLOW_POSTGRES_URL is unset and there is no Secret block {block!r}; set "
        "TAXIFLOW_POSTGRES_URL=postgresql://user:password@host:port/database in the environment, or save that URL in a Prefect Secret block: "
        f"`Secret(value=...).save({block!r})` (TAXIFLOW_POSTGRES_SECRET_BLOCK names another block)"
    )


def test_rows_come_back_in_file_order_and_a_changed_month_is_refused(server, january):
    url = server.url()
    sample = january.slice(0, 500)
    load = load_month(url, "green", "2023-08", sample, source_sha256="1" * 64, source_origin="local")
    # CLUSTER rewrites the partition in pickup order: the rows still come back in the file's order.
    execute(server, "CLUSTER taxiflow_green_trips_2023_08 USING taxiflow_green_trips_2023_08_pickup_at_idx")
    stored = [row[0] for row in query(server, "SELECT source_row FROM taxiflow_green_trips_2023_08")]
    assert stored != sorted(stored)
    table, _ = read_month(url, "green", "2023-08", COLUMNS)
    assert table.equals(sample.cast(table.schema))

    execute(server, "DELETE FROM taxiflow_green_trips WHERE source_month = '2023-08-01' AND source_row = 7")
    with pytest.raises(DataFileError) as excinfo:
        read_month(url, "green", "2023-08", COLUMNS)
    assert f"holds 499 rows that are not the 500 rows of load {load.load_id}" in _message(excinfo)
    assert "reload it with `taxiflow data load-sql --taxi green --months 2023-08`" in _message(excinfo)


def test_a_read_waits_for_a_load_in_progress_and_sees_all_of_it(server, january):
    """The read's snapshot is taken after the month's lock: never the old record with the new rows, or none."""
    import adbc_driver_postgresql.dbapi as pg

    url = server.url()
    load_month(url, "green", "2023-09", january.slice(0, 300), source_sha256="2" * 64, source_origin="local")
    with pg.connect(url) as loader, loader.cursor() as cur:
        # What a load holds while it runs: the month's partition, exclusively (its TRUNCATE).
        cur.execute("TRUNCATE taxiflow_green_trips_2023_09")
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(read_month, url, "green", "2023-09", ["distance"])
            time.sleep(0.5)
            assert not reading.done()
            cur.execute(
                "INSERT INTO taxiflow_green_trips_2023_09 (distance, source_month, source_row) SELECT s, '2023-09-01', s FROM generate_series(0, 4) AS s"
            )
            cur.execute("UPDATE taxiflow_trip_loads SET load_id = 'new-load', rows = 5 WHERE taxi = 'green' AND month = '2023-09'")
            loader.commit()
            table, load = reading.result(timeout=30)
    assert (load.load_id, load.rows, table.column("distance").to_pylist()) == ("new-load", 5, [0.0, 1.0, 2.0, 3.0, 4.0])
