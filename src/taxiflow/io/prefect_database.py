"""Prefect's local SQLite database, set up once when several first runs start together.

Without PREFECT_API_URL, every run starts a temporary Prefect server that migrates the database in
PREFECT_HOME on start-up. On a new home that takes ~20 s here, and two runs starting together would
both migrate it. The first run migrates it under a cross-process lock and leaves a marker naming
the Prefect version; later runs (and the others waiting on the lock) find it ready.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from taxiflow.io.file_lock import exclusive_file_lock


def _local_sqlite_file() -> Path | None:
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    text = url.get_secret_value() if url is not None else ""
    prefix = "sqlite+aiosqlite:///"
    return Path(text.removeprefix(prefix)) if text.startswith(prefix) else None


def ensure_local_prefect_database() -> None:
    """Migrate the temporary server's database once (no-op for PostgreSQL or a ready database)."""
    import prefect

    database = _local_sqlite_file()
    if database is None:
        return
    marker = database.with_name(database.name + ".taxiflow-ready")
    if marker.is_file() and marker.read_text() == prefect.__version__:
        return
    with exclusive_file_lock(database.with_name(database.name + ".taxiflow-lock")):
        if marker.is_file() and marker.read_text() == prefect.__version__:
            return
        print(f"taxiflow: setting up Prefect's local database {database} (once, ~20 s)", file=sys.stderr)
        from prefect.server.database import provide_database_interface

        asyncio.run(provide_database_interface().create_db())
        marker.write_text(prefect.__version__)
