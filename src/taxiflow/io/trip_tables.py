"""Reading only the columns a run needs from a TLC parquet file, renamed to canonical names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from taxiflow.core.errors import DataFileError
from taxiflow.core.schema import TripLayout


def open_parquet(path: str, *, source: str | None = None) -> pq.ParquetFile:
    """Open the footer; a file that isn't parquet (HTML page, truncated, random bytes) fails here."""
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError variants for junk
        raise DataFileError(f"{source or path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


def _wanted_columns(parquet: pq.ParquetFile, layout: TripLayout, canonical: list[str], source: str) -> dict[str, str]:
    """canonical name -> the file's column, each present once."""
    names = parquet.schema_arrow.names
    wanted = layout.resolve(canonical, names, source=source)
    dupes = sorted(n for n, c in Counter(names).items() if c > 1 and n in wanted.values())
    if dupes:
        raise DataFileError(f"{source}: column(s) {', '.join(dupes)} appear more than once")
    return wanted


def read_trip_table(path: str, layout: TripLayout, canonical: list[str], *, source: str | None = None) -> pa.Table:
    """Columns `canonical` (canonical names) from `path`, laid out as `layout` says."""
    source = source or path
    parquet = open_parquet(path, source=source)
    wanted = _wanted_columns(parquet, layout, canonical, source)
    try:
        table = parquet.read(columns=list(wanted.values()))
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the columns are unusable
        raise DataFileError(f"{source}: cannot decode columns {', '.join(wanted.values())} ({exc})") from None
    return table.rename_columns(list(wanted.keys()))


def iter_trip_batches(path: str, layout: TripLayout, canonical: list[str], *, batch_rows: int, source: str | None = None) -> Iterator[pa.RecordBatch]:
    """`read_trip_table`'s columns, streamed: at most `batch_rows` rows at a time, row group by row group.

    Memory stays bounded by the batch, whatever the file's size.
    """
    source = source or path
    parquet = open_parquet(path, source=source)
    wanted = _wanted_columns(parquet, layout, canonical, source)
    names = list(wanted.keys())
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(wanted.values())):
            yield pa.RecordBatch.from_arrays([batch.column(column) for column in wanted.values()], names=names)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the columns are unusable
        raise DataFileError(f"{source}: cannot decode columns {', '.join(wanted.values())} ({exc})") from None
