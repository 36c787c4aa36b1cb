"""A real PostgreSQL for tests of the trips database: password authentication, on 127.0.0.1, thrown away after.

The cluster itself comes from `taxiflow.platform.postgres.scratch_postgres` (the benchmark starts the
same one); this module adds what tests need around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from taxiflow.platform.postgres import ScratchPostgres, scratch_postgres


@contextmanager
def trips_postgres() -> Iterator[ScratchPostgres]:
    """A fresh cluster and database on a free port (~3 s to start), stopped and removed on exit."""
    with scratch_postgres() as server:
        yield server


def query(server: ScratchPostgres, sql: str, parameters: tuple = ()) -> list[tuple]:
    """Rows of `sql` run on its own connection (to look at tables behind the module's back)."""
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(server.url()) as conn, conn.cursor() as cur:
        cur.execute(sql, parameters=parameters or None)
        rows = cur.fetchall()
        conn.rollback()
    return rows


def execute(server: ScratchPostgres, *statements: str, autocommit: bool = False) -> None:
    """Run `statements` in one committed transaction, or each on its own with `autocommit` (CREATE DATABASE needs it)."""
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(server.url(), autocommit=autocommit) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        if not autocommit:
            conn.commit()
