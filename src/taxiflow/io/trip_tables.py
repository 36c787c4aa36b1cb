"""Reading only the columns a run needs from a TLC parquet file, renamed to canonical names."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from taxiflow.core.errors import DataFileError
from taxiflow.core.schema import TripLayout


def read_trip_table(path: str, layout: TripLayout, canonical: list[str]) -> pa.Table:
    """Columns `canonical` (canonical names) from `path`, laid out as `layout` says."""
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except Exception as exc:
        raise DataFileError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    wanted = layout.source_columns(canonical)
    absent = [name for name in canonical if name not in wanted]
    if absent:
        raise DataFileError(f"{path}: {layout.taxi} trips have no {', '.join(absent)} column")
    dupes = sorted(n for n, c in Counter(names).items() if c > 1 and n in wanted.values())
    if dupes:
        raise DataFileError(f"{path}: column(s) {', '.join(dupes)} appear more than once")
    missing = [src for src in wanted.values() if src not in names]
    if missing:
        raise DataFileError(
            f"{path}: missing column(s) {', '.join(missing)} expected in {layout.taxi} trip files "
            f"(found: {', '.join(names)})"
        )
    try:
        table = parquet.read(columns=list(wanted.values()))
    except Exception as exc:
        raise DataFileError(f"{path}: cannot decode columns {', '.join(wanted.values())} ({exc})") from None
    return table.rename_columns(list(wanted.keys()))
