"""Trips in PostgreSQL: months loaded from TLC files and read back as Arrow, through ADBC.

Columnar both ways: `adbc_ingest` writes with COPY (binary), `fetch_arrow_table` reads with COPY;
no row passes through Python. Layout, per trip type (`taxiflow_green_trips`, ...):

- the canonical columns that type has (`schema.TRIP_LAYOUTS`), in PostgreSQL types that hold what
  preparation makes of them (timestamp, integer zones, double precision miles), plus `source_month`
  (date, first day of the month of the *file* the row came from: stray pickups from other months stay
  with their file, so a month reads back as exactly its file's rows) and `source_row` (the row's
  position in that file: the primary key with `source_month`, and the order rows are read back in,
  so a model trained on them is the one trained on the file);
- LIST-partitioned by `source_month`, one partition per month (`taxiflow_green_trips_2023_01`): a
  month reads as a sequential scan of its own partition, which is several times faster than an index
  scan picking its rows out of one big heap, and reloading it truncates only that partition;
- indexed on `pickup_at` (queries by time) and on (`source_month`, `source_row`) (the key).

`taxiflow_trip_loads` holds one record per (taxi, month): a fresh `load_id` per load (the month's
identity for caching), row count, the file's sha256 and origin. A load replaces the month's rows and
its record in one transaction; a read takes the record and the rows from one snapshot, and checks
that they agree.

Identifiers come only from the fixed schema (trip types, canonical names) and validated months (a
partition's name and its bounds in DDL, which takes no parameters); every other value travels as a
bound parameter. The connection URL is never shown with its password.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from taxiflow.core.errors import DataFileError, InvalidArgumentError, MonthNotAvailableError, TaxiflowError
from taxiflow.core.months import Month
from taxiflow.core.schema import CANONICAL_FIELDS, DISTANCE, DROPOFF_AT, DROPOFF_ZONE, PICKUP_AT, PICKUP_ZONE, TripLayout, layout_for
from taxiflow.io.failpoints import failpoint
from taxiflow.io.trip_tables import read_trip_table
from taxiflow.io.uris import redact_uri

if TYPE_CHECKING:
    from adbc_driver_manager.dbapi import Connection, Cursor
    from pydantic import SecretStr

    from taxiflow.io.month_cache import TripFile

log = logging.getLogger("taxiflow.trips_sql")

LOADS_TABLE = "taxiflow_trip_loads"
SOURCE_MONTH = "source_month"
SOURCE_ROW = "source_row"
URL_SCHEMES = ("postgresql", "postgres")
LOAD_FAILPOINT = "trips-sql-load"  # between writing a month and committing it (tests of the rollback)

# Each canonical column's type in the table, and the Arrow type COPY needs for it.
_SQL_TYPES = {PICKUP_AT: "timestamp", DROPOFF_AT: "timestamp", PICKUP_ZONE: "integer", DROPOFF_ZONE: "integer", DISTANCE: "double precision"}
_ARROW_TYPES = {PICKUP_AT: pa.timestamp("us"), DROPOFF_AT: pa.timestamp("us"), PICKUP_ZONE: pa.int32(), DROPOFF_ZONE: pa.int32(), DISTANCE: pa.float64()}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_CONNECT_TIMEOUT_S = "10"  # libpq waits ~2 min on an unanswering host without one
# The driver's built-in type table: skips its catalog query on connect (~35 ms of ~55 ms here); our columns are all built-in types.
_DB_OPTIONS = {"adbc.postgresql.type_resolver_mode": "builtin"}
# Read settings, for this transaction only: one plain sequential scan of the month's partition from its
# first block, so rows come in the order they were stored (no parallel workers interleaving their
# pages, no scan joining another one midway), and no JIT compile of a one-line plan.
_READ_SETTINGS = ("max_parallel_workers_per_gather = 0", "synchronize_seqscans = off", "jit = off")


@dataclass(frozen=True)
class MonthLoad:
    """One month as loaded: `load_id` names this load (a reload gets a new one)."""

    taxi: str
    month: str  # YYYY-MM
    load_id: str  # uuid4 hex
    rows: int
    source_sha256: str
    loaded_at: dt.datetime  # UTC, the server's clock


def trips_table(taxi: str) -> str:
    """`taxiflow_<taxi>_trips`; the trip type is checked against the fixed list."""
    return f"taxiflow_{layout_for(taxi).taxi}_trips"


def _partition(taxi: str, month: Month) -> str:
    return f"{trips_table(taxi)}_{month.year:04d}_{month.month:02d}"


def _fields(layout: TripLayout) -> list[str]:
    return [f for f in CANONICAL_FIELDS if layout.has(f)]


def _month(month: str | Month) -> Month:
    return month if isinstance(month, Month) else Month.parse(month)


# --- connections -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where a URL points, for messages: never its password."""

    host: str
    port: int
    database: str
    user: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


def _check_url(url: str, *, origin: str = "PostgreSQL URL") -> None:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in URL_SCHEMES:
        shown = f"a {scheme}:// URL" if scheme else "no URL"  # the value itself may be a secret
        raise InvalidArgumentError(f"{origin}: expected postgresql://user:password@host:port/database (or postgres://), got {shown}")


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        raise InvalidArgumentError(f"PostgreSQL URL {redact_uri(url)}: the port is not a number") from None
    user = unquote(parts.username or "")
    return _Target(parts.hostname or "localhost", port, unquote(parts.path.lstrip("/")) or user or "postgres", user or "(default user)")


def _with_connect_timeout(url: str) -> str:
    parts = urlsplit(url)
    if any(key == "connect_timeout" for key, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return url
    # Appended as text: re-encoding the user's parameters could change them (libpq reads no `+` as a space).
    return urlunsplit(parts._replace(query=f"{parts.query}&connect_timeout={_CONNECT_TIMEOUT_S}".lstrip("&")))


def _scrub(text: str, url: str) -> str:
    """A driver message safe to show: the URL's password removed wherever it appears, one line."""
    password = urlsplit(url).password
    for secret in {password, unquote(password)} if password else ():
        if secret:
            text = text.replace(secret, "***")
    text = text.replace("IO: [libpq] Failed to connect: ", "").replace("IO: [libpq] ", "")
    return " ".join(text.split())[:400]


def _connect_error(url: str, exc: Exception) -> TaxiflowError:
    target, reason = _target(url), _scrub(str(exc), url)
    if "password authentication failed" in reason or "no password supplied" in reason:
        return TaxiflowError(f"PostgreSQL at {target} refused user {target.user}: password authentication failed")
    if f'database "{target.database}" does not exist' in reason:
        return TaxiflowError(f"PostgreSQL at {target.host}:{target.port}: database {target.database!r} does not exist; expected the database named in the URL")
    unreachable = ("Connection refused", "could not translate host name", "timeout expired", "No route to host", "Network is unreachable", "could not connect")
    if any(marker in reason for marker in unreachable):
        return TaxiflowError(f"PostgreSQL at {target} is not reachable ({reason}); expected a server accepting connections there")
    return TaxiflowError(f"cannot connect to PostgreSQL at {target}: {reason}")


def _driver() -> ModuleType:
    """ADBC's PostgreSQL DB-API module, imported when first used (with pyarrow.dataset: ~0.1 s)."""
    import adbc_driver_postgresql.dbapi as driver  # type: ignore[import-untyped]  # it ships no type information

    return driver


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    _check_url(url)
    driver = _driver()
    try:
        conn = driver.connect(_with_connect_timeout(url), db_kwargs=_DB_OPTIONS)
    except driver.Error as exc:
        raise _connect_error(url, exc) from None
    try:
        yield conn
    finally:
        conn.close()


def _sql_error(url: str, what: str, exc: Exception) -> TaxiflowError:
    return TaxiflowError(f"PostgreSQL at {_target(url)}: {what} failed: {_scrub(str(exc), url)}")


def _is_undefined_table(exc: Exception) -> bool:
    return getattr(exc, "sqlstate", None) == "42P01" or ('relation "' in str(exc) and "does not exist" in str(exc))


# --- loading -----------------------------------------------------------------------------------------


def _zones_as_int32(column: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    """Zone IDs as int32, as preparation makes them: out-of-range (and NaN) values null, fractions refused."""
    kind = column.type
    if pa.types.is_null(kind):
        return pa.chunked_array([pa.nulls(len(column), pa.int32())])
    if pa.types.is_floating(kind):
        column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, kind))
        if pc.any(pc.not_equal(column, pc.floor(column))).as_py():
            raise DataFileError(f"{source}: column {name!r} holds fractional values, expected integer zone IDs")
    elif not pa.types.is_integer(kind):
        raise DataFileError(f"{source}: column {name!r} holds {kind}, expected integer zone IDs")
    if kind != pa.int32():
        in_range = pc.and_(pc.greater_equal(column, _INT32_MIN), pc.less_equal(column, _INT32_MAX))
        column = pc.if_else(in_range, column, pa.scalar(None, kind))
    return pc.cast(column, pa.int32())


def _as_table_type(column: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    """`column` in its table type; what preparation would refuse is refused here, with its message."""
    kind = column.type
    if name in (PICKUP_AT, DROPOFF_AT):
        if pa.types.is_null(kind):
            return pa.chunked_array([pa.nulls(len(column), _ARROW_TYPES[name])])
        if not pa.types.is_timestamp(kind):
            raise DataFileError(f"{source}: column {name!r} holds {kind}, expected a timestamp")
        # Nanoseconds are truncated to microseconds, as preparation does; a zone-aware column becomes UTC wall time.
        return pc.cast(column, _ARROW_TYPES[name], safe=False)
    if name in (PICKUP_ZONE, DROPOFF_ZONE):
        return _zones_as_int32(column, name, source)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
        raise DataFileError(f"{source}: column {name!r} holds {kind}, expected a number of miles")
    return pc.cast(column, pa.float64())


def rows_for_load(table: pa.Table, taxi: str, month: str | Month, *, source: str) -> pa.Table:
    """`table` (canonical columns, as `read_trip_table` returns them) in the trips table's columns and types."""
    layout, month = layout_for(taxi), _month(month)
    fields = _fields(layout)
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise DataFileError(f"{source}: missing column(s) {', '.join(missing)}; expected the canonical {taxi} trip columns {', '.join(fields)}")
    if table.num_rows > _INT32_MAX:
        raise DataFileError(f"{source}: {table.num_rows:,} rows, more than a month's table can number")
    columns = [_as_table_type(table.column(f), f, source) for f in fields]
    first_day = pa.scalar(dt.date(month.year, month.month, 1), pa.date32())
    columns += [pa.repeat(first_day, table.num_rows), pa.array(np.arange(table.num_rows, dtype=np.int32))]
    return pa.table(columns, names=[*fields, SOURCE_MONTH, SOURCE_ROW])


def _lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for `parts`."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big", signed=True)


def _ensure_tables(cur: Cursor, conn: Connection, taxi: str, month: Month) -> None:
    """The trips table of `taxi`, its partition for `month` and the loads table, created if missing (committed)."""
    table, partition = trips_table(taxi), _partition(taxi, month)
    cur.execute("SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL", parameters=(LOADS_TABLE, partition))
    row = cur.fetchone()
    conn.rollback()
    if row is not None and row[0]:
        return  # checked without locks: loads of other months don't wait on DDL they don't need
    columns = ", ".join(f'"{f}" {_SQL_TYPES[f]}' for f in _fields(layout_for(taxi)))
    first_day = dt.date(month.year, month.month, 1).isoformat()  # from a validated Month: digits and dashes only
    # Two first loads at once would race on CREATE ... IF NOT EXISTS (duplicate catalog rows): serialise them.
    cur.execute("SELECT pg_advisory_xact_lock($1)", parameters=(_lock_key("taxiflow-trips-ddl"),))
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {LOADS_TABLE} (taxi text NOT NULL, month text NOT NULL, load_id text NOT NULL, rows bigint NOT NULL,"
        " source_sha256 text NOT NULL, source_origin text NOT NULL, loaded_at timestamptz NOT NULL, PRIMARY KEY (taxi, month))"
    )
    cur.execute(
        f'CREATE TABLE IF NOT EXISTS "{table}" ({columns}, {SOURCE_MONTH} date NOT NULL, {SOURCE_ROW} integer NOT NULL,'
        f" PRIMARY KEY ({SOURCE_MONTH}, {SOURCE_ROW})) PARTITION BY LIST ({SOURCE_MONTH})"
    )
    cur.execute(f'CREATE INDEX IF NOT EXISTS "{table}_pickup_at" ON "{table}" ({PICKUP_AT})')
    cur.execute(f'CREATE TABLE IF NOT EXISTS "{partition}" PARTITION OF "{table}" FOR VALUES IN (\'{first_day}\')')
    conn.commit()


def _load(conn: Connection, url: str, taxi: str, month: Month, rows: pa.Table, *, source_sha256: str, source_origin: str) -> MonthLoad:
    partition = _partition(taxi, month)
    load_id = uuid.uuid4().hex
    with conn.cursor() as cur:
        try:
            _ensure_tables(cur, conn, taxi, month)
            cur.execute("SELECT current_schema()")
            schema = cur.fetchone()
            conn.rollback()
            # One transaction: the month's old rows and record go, the new ones come, or nothing changes.
            cur.execute("SELECT pg_advisory_xact_lock($1)", parameters=(_lock_key("taxiflow-trips-load", taxi, str(month)),))
            # TRUNCATE, not DELETE: the partition gets a fresh heap (rows stored in file order, no dead
            # rows to scan past) and is rolled back like any write. It waits for readers of this month.
            cur.execute(f'TRUNCATE "{partition}"')
            written = cur.adbc_ingest(partition, rows, mode="append", db_schema_name=schema[0] if schema else None)
            if written not in (-1, rows.num_rows):
                raise DataFileError(f"PostgreSQL at {_target(url)}: wrote {written:,} of {rows.num_rows:,} rows of {taxi} {month}")
            cur.execute(
                f"INSERT INTO {LOADS_TABLE} (taxi, month, load_id, rows, source_sha256, source_origin, loaded_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, now())"
                " ON CONFLICT (taxi, month) DO UPDATE SET load_id = EXCLUDED.load_id, rows = EXCLUDED.rows,"
                " source_sha256 = EXCLUDED.source_sha256, source_origin = EXCLUDED.source_origin, loaded_at = EXCLUDED.loaded_at"
                " RETURNING loaded_at",
                parameters=(taxi, str(month), load_id, rows.num_rows, source_sha256, redact_uri(source_origin)),
            )
            loaded = cur.fetchone()
            failpoint(LOAD_FAILPOINT)
            conn.commit()
        except _driver().Error as exc:
            conn.rollback()
            raise _sql_error(url, f"loading {taxi} {month} into {partition}", exc) from None
        except BaseException:
            conn.rollback()
            raise
    loaded_at = loaded[0] if loaded else dt.datetime.now(dt.UTC)
    return MonthLoad(taxi, str(month), load_id, rows.num_rows, source_sha256, loaded_at.astimezone(dt.UTC))


def load_month(url: str, taxi: str, month: str, table: pa.Table, *, source_sha256: str, source_origin: str) -> MonthLoad:
    """Load (or reload) one month's trips: `table` holds its file's canonical columns (`read_trip_table`).

    Tables are created if missing; then, in one transaction, the month's rows are replaced by
    `table`'s (COPY) and its load record by a new one. A failure leaves the previous load as it was.
    """
    parsed = _month(month)
    rows = rows_for_load(table, taxi, parsed, source=f"{taxi} {parsed} ({redact_uri(source_origin)})")
    with _connection(url) as conn:
        return _load(conn, url, taxi, parsed, rows, source_sha256=source_sha256, source_origin=source_origin)


def load_months(url: str, taxi: str, trip_files: list[TripFile]) -> list[MonthLoad]:
    """Load each verified file as its month (one transaction per month, one connection for all)."""
    layout = layout_for(taxi)
    wrong = [f"{f.taxi} {f.month}" for f in trip_files if f.taxi != layout.taxi]
    if wrong:
        raise InvalidArgumentError(f"load_months({taxi!r}): got files of another trip type: {', '.join(wrong)}")
    loads = []
    with _connection(url) as conn:
        for trip_file in trip_files:
            month = _month(trip_file.month)
            table = read_trip_table(trip_file.path, layout, list(layout.columns), source=trip_file.path)
            rows = rows_for_load(table, taxi, month, source=trip_file.path)
            loads.append(_load(conn, url, taxi, month, rows, source_sha256=trip_file.sha256, source_origin=trip_file.origin))
            log.info("loaded %s %s: %s rows (load %s)", taxi, month, f"{rows.num_rows:,}", loads[-1].load_id)
    return loads


# --- reading -----------------------------------------------------------------------------------------


def _load_hint(taxi: str, month: Month) -> str:
    return f"load months with `taxiflow data load-sql --taxi {taxi} --months {month}`"


def _not_loaded(cur: Cursor, conn: Connection, url: str, taxi: str, month: Month) -> MonthNotAvailableError:
    """Why `month`'s partition is missing: no trips table at all, or only not this month."""
    conn.rollback()
    cur.execute("SELECT to_regclass($1) IS NOT NULL", parameters=(trips_table(taxi),))
    row = cur.fetchone()
    conn.rollback()
    if row is None or not row[0]:
        return MonthNotAvailableError(f"no table {trips_table(taxi)} in PostgreSQL at {_target(url)}: {_load_hint(taxi, month)}")
    return MonthNotAvailableError(f"{taxi} {month} is not loaded in {trips_table(taxi)} at {_target(url)}: {_load_hint(taxi, month)}")


def _month_load(cur: Cursor, conn: Connection, url: str, taxi: str, month: Month) -> MonthLoad:
    """The month's load record; a month never loaded, or loaded empty, is an error."""
    cur.execute(f"SELECT load_id, rows, source_sha256, loaded_at FROM {LOADS_TABLE} WHERE taxi = $1 AND month = $2", parameters=(taxi, str(month)))
    record = cur.fetchone()
    if record is None:
        raise _not_loaded(cur, conn, url, taxi, month)
    load = MonthLoad(taxi, str(month), record[0], int(record[1]), record[2], record[3].astimezone(dt.UTC))
    if load.rows == 0:
        where = month_source(url, taxi, str(month))
        raise DataFileError(f"{where}: load {load.load_id} holds no trips (0 rows); expected a month with trips: {_load_hint(taxi, month)}")
    return load


def loaded_month(url: str, taxi: str, month: str) -> MonthLoad:
    """The month's load record (its identity: `load_id`) without reading a row; errors as `read_month`'s."""
    parsed = _month(month)
    layout_for(taxi)  # an unknown trip type is an argument error, not a missing table
    with _connection(url) as conn, conn.cursor() as cur:
        try:
            try:
                return _month_load(cur, conn, url, taxi, parsed)
            except _driver().Error as exc:
                if _is_undefined_table(exc):  # nothing loaded in this database yet
                    raise _not_loaded(cur, conn, url, taxi, parsed) from None
                raise
        except _driver().Error as exc:
            raise _sql_error(url, f"reading the load record of {taxi} {parsed}", exc) from None
        finally:
            conn.rollback()


def _in_file_order(rows: pa.Table, load: MonthLoad, where: str) -> pa.Table:
    """`rows` sorted by `source_row`, checked to be exactly rows 0..n-1 of the load (then the column dropped)."""
    position = rows.column(SOURCE_ROW).to_numpy()
    expected = np.arange(load.rows, dtype=position.dtype)
    if position.shape != expected.shape or not np.array_equal(position, expected):
        # A sequential scan of a freshly loaded partition returns file order; after a CLUSTER or a hand edit it may not.
        order = np.argsort(position, kind="stable")
        if position.shape != expected.shape or not np.array_equal(position[order], expected):
            raise DataFileError(
                f"{where}: holds {len(position):,} rows that are not the {load.rows:,} rows of load {load.load_id}; "
                f"expected the month as loaded: reload it with `taxiflow data load-sql --taxi {load.taxi} --months {load.month}`"
            )
        rows = rows.take(pa.array(order))
    return rows.drop_columns([SOURCE_ROW])


def read_month(url: str, taxi: str, month: str, columns: list[str]) -> tuple[pa.Table, MonthLoad]:
    """One loaded month's trips, only `columns` (canonical names), in file order, with its load record.

    The filter runs on the server: only the month's partition (`source_month` = the month) is
    scanned, and only `columns` (plus `source_row`) are sent. Rows and record come from one
    snapshot. The table has `read_trip_table`'s canonical names, so `prepare_trips` takes it as it
    takes a file's.
    """
    layout, parsed = layout_for(taxi), _month(month)
    unknown = [c for c in columns if c not in CANONICAL_FIELDS]
    if unknown or not columns:
        raise InvalidArgumentError(f"columns: expected some of {', '.join(CANONICAL_FIELDS)}, got {', '.join(unknown) or 'none'}")
    lacking = [c for c in columns if not layout.has(c)]
    if lacking:
        raise DataFileError(f"{trips_table(taxi)}: {taxi} trips have no {', '.join(lacking)} column")
    where = month_source(url, taxi, str(parsed))
    selected = ", ".join(f'"{c}"' for c in dict.fromkeys(columns))
    with _connection(url) as conn, conn.cursor() as cur:
        try:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for setting in _READ_SETTINGS:
                cur.execute(f"SET LOCAL {setting}")
            try:
                # Before the first query, which fixes the snapshot: a load of this month in progress
                # (it holds the partition exclusively) finishes first, and then none starts until we are done.
                cur.execute(f'LOCK TABLE ONLY "{_partition(taxi, parsed)}" IN ACCESS SHARE MODE')
            except _driver().Error as exc:
                if _is_undefined_table(exc):
                    raise _not_loaded(cur, conn, url, taxi, parsed) from None
                raise
            load = _month_load(cur, conn, url, taxi, parsed)
            # The month's own partition, by name (from the validated month, like the LOCK above), with no
            # bound parameter: a statement with parameters makes the driver give up COPY for a slower
            # row protocol (3.4M rows: ~2.7 s instead of ~1.7 s), and a filter on the parent table with a
            # value known only at run time would lock every month's partition, waiting for their loads.
            cur.execute(f'SELECT {selected}, {SOURCE_ROW} FROM "{_partition(taxi, parsed)}"')
            rows = cur.fetch_arrow_table()
            conn.rollback()  # read-only: nothing to commit
        except _driver().Error as exc:
            conn.rollback()
            raise _sql_error(url, f"reading {taxi} {parsed}", exc) from None
        except BaseException:
            conn.rollback()
            raise
    rows = _in_file_order(rows, load, where)
    # Plain fields, as a file's: the driver tags each with its PostgreSQL type.
    return pa.Table.from_arrays(rows.columns, names=rows.column_names), load


# --- the connection string ---------------------------------------------------------------------------


def postgres_url(setting: SecretStr | None, block_name: str) -> str:
    """The trips database's URL: `setting` (TAXIFLOW_POSTGRES_URL), else the Prefect Secret block `block_name`."""
    if setting is not None and setting.get_secret_value().strip():
        url = setting.get_secret_value().strip()
        _check_url(url, origin="TAXIFLOW_POSTGRES_URL")
        return url
    from prefect.blocks.system import Secret

    from taxiflow.io.blocks import load_block

    how = (
        "set TAXIFLOW_POSTGRES_URL=postgresql://user:password@host:port/database in the environment, or save that URL in a Prefect "
        f"Secret block: `Secret(value=...).save({block_name!r})` (TAXIFLOW_POSTGRES_SECRET_BLOCK names another block)"
    )
    try:
        block = load_block(Secret, block_name)
    except ValueError:  # Prefect: "Unable to find block document named ..."
        raise TaxiflowError(f"no PostgreSQL URL: TAXIFLOW_POSTGRES_URL is unset and there is no Secret block {block_name!r}; {how}") from None
    value = block.get()
    if not isinstance(value, str) or not value.strip():
        raise TaxiflowError(f"Secret block {block_name!r} does not hold a URL string; {how}")
    _check_url(value.strip(), origin=f"Secret block {block_name!r}")
    return value.strip()


def month_source(url: str, taxi: str, month: str) -> str:
    """How messages name a loaded month (as a file's path names a file's month): no password."""
    return f"{taxi} {_month(month)} in {trips_table(taxi)} at PostgreSQL {_target(url)}"
