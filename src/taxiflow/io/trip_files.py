"""Getting a month's file: from a local directory when it is there, else from a source via the cache."""

from __future__ import annotations

from pathlib import Path

from taxiflow.core.errors import MonthNotAvailableError
from taxiflow.core.months import Month
from taxiflow.core.preparation import prepare_trips
from taxiflow.core.schema import layout_for, tlc_file_name
from taxiflow.io.month_cache import MonthCache, TripFile, file_sha256
from taxiflow.io.sources import MonthSource
from taxiflow.io.trip_tables import open_parquet, read_trip_table


def verify_month_file(path: Path, taxi: str, month: str, *, source: str) -> int:
    """Everything short of training: parquet footer, columns, types, contracts, named month.

    Raises a DataFileError naming `source` if the file is unusable; returns its row count.
    """
    layout = layout_for(taxi)
    table = read_trip_table(str(path), layout, list(layout.columns), source=source)
    prepare_trips(table, source=source, month=Month.parse(month))
    return table.num_rows


def local_month_file(taxi: str, month: str, data_dir: Path) -> TripFile | None:
    path = data_dir / tlc_file_name(taxi, month)
    if not path.is_file():
        return None
    rows = open_parquet(str(path)).metadata.num_rows
    return TripFile(taxi, month, str(path), file_sha256(path), path.stat().st_size, rows, "local")


def known_month_file(taxi: str, month: str, *, data_dir: Path | None, source: MonthSource | None, cache: MonthCache) -> TripFile | None:
    """The month's file if it is here already (data dir, or verified in the cache); never downloads."""
    if data_dir is not None and (local := local_month_file(taxi, month, data_dir)) is not None:
        return local
    return cache.get(source, taxi, month) if source is not None else None


def get_month_file(
    taxi: str,
    month: str,
    *,
    data_dir: Path | None,
    source: MonthSource | None,
    cache: MonthCache,
    refresh: bool = False,
) -> TripFile:
    """`data_dir`'s file if present (read in place), else the source's through the cache."""
    if data_dir is not None and (local := local_month_file(taxi, month, data_dir)) is not None:
        return local
    if source is None:
        where = data_dir / tlc_file_name(taxi, month) if data_dir else tlc_file_name(taxi, month)
        raise MonthNotAvailableError(f"{taxi} {month}: {where} not found and no download source is configured")

    def verify(tmp: Path) -> int:
        label = f"{tlc_file_name(taxi, month)} from {source.identity}"
        return verify_month_file(tmp, taxi, month, source=label)

    return cache.fetch(source, taxi, month, verify, refresh=refresh)
