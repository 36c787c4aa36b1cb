"""The TLC's taxi zone lookup (`taxi_zone_lookup.csv`): zone ID -> borough, found like the months are.

From the data directory when it is there (read in place), else downloaded from the source's site,
where the TLC keeps it under `misc/` next to `trip-data/`, with the source's retry policy, into the
same cache directory as that source's months. A download lands in a temporary file, is parsed and
validated, and only then renamed into place under the entry's lock: a partial or bad file is never
served, and a second call needs no network.

MonthCache is not reused as is: its entries are parquet months (path from trip type and month,
validity from the parquet footer). The lookup is 12 KB, so parsing it again on every use is its
validity check.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import polars as pl

from taxiflow.core.errors import DataFileError
from taxiflow.core.evaluation import ZoneBoroughs, zone_boroughs_from_lookup
from taxiflow.io.file_lock import exclusive_file_lock
from taxiflow.io.month_cache import file_sha256, source_directory_name
from taxiflow.io.sources import FetchedObject, HttpSource

log = logging.getLogger("taxiflow.zone_lookup")

ZONE_LOOKUP_NAME = "taxi_zone_lookup.csv"
_COLUMNS = ("LocationID", "Borough")


@dataclass(frozen=True)
class ZoneLookup:
    path: str
    origin: str  # "local" or the URL it was downloaded from
    sha256: str
    boroughs: ZoneBoroughs


def zone_lookup_url(base_url: str) -> str:
    """`https://host/trip-data/` -> `https://host/misc/taxi_zone_lookup.csv` (the TLC's layout)."""
    return urljoin(base_url.rstrip("/") + "/", f"../misc/{ZONE_LOOKUP_NAME}")


def read_zone_boroughs(path: Path, *, source: str | None = None) -> ZoneBoroughs:
    """Parse and validate a lookup file: only its LocationID and Borough columns are read.

    Raises DataFileError naming `source` (default: the path) for a file that isn't a CSV, lacks a
    column, has no rows, or doesn't list every zone with a borough.
    """
    source = source or str(path)
    try:
        # All text: the TLC quotes fields and writes "N/A", which must stay a string, not a null.
        frame = pl.scan_csv(path, infer_schema=False)
        found = frame.collect_schema().names()
        missing = [c for c in _COLUMNS if c not in found]
        if missing:
            shown = ", ".join(repr(c[:40]) for c in found[:10])
            raise DataFileError(f"{source}: missing column(s) {', '.join(missing)}; expected a CSV with columns {', '.join(_COLUMNS)} (found: {shown})")
        table = frame.select(_COLUMNS).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataFileError(f"{source}: not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if table.height == 0:
        raise DataFileError(f"{source}: holds no zones (0 rows); expected one row per taxi zone")
    ids = table["LocationID"].str.strip_chars()
    as_int = ids.cast(pl.Int64, strict=False)
    bad = ids.filter(as_int.is_null())
    if bad.len():
        raise DataFileError(f"{source}: column 'LocationID' holds {', '.join(repr(v) for v in bad.head(5).to_list())}; expected integer zone IDs")
    return zone_boroughs_from_lookup(as_int.to_numpy(), table["Borough"].to_list(), source=source)


class _LookupDownload(HttpSource):
    """The source's download-with-retries, pointed at the lookup's URL instead of a month's."""

    def __init__(self, source: HttpSource) -> None:
        super().__init__(source.base_url, timeout_s=source.timeout_s, policy=source.policy, progress=source.progress)
        self.lookup_url = zone_lookup_url(source.base_url)

    def url(self, taxi: str, month: str) -> str:
        return self.lookup_url

    def download(self, dest: Path) -> FetchedObject:
        # Labels errors "zone lookup file is not published: <url> ..." / "zone lookup file: giving up after ...".
        return self.fetch("zone lookup", "file", dest)


def get_zone_lookup(*, data_dir: Path | None, source: HttpSource | None, cache_root: Path, refresh: bool = False) -> ZoneLookup:
    """`data_dir`'s lookup if present (read in place), else the source's through the cache.

    `cache_root` is the month cache's root (settings.cache_dir()); the lookup sits in the same
    per-source directory as that source's months.
    """
    if data_dir is not None and (local := data_dir / ZONE_LOOKUP_NAME).is_file():
        return ZoneLookup(str(local), "local", file_sha256(local), read_zone_boroughs(local))
    if source is None:
        where = data_dir / ZONE_LOOKUP_NAME if data_dir is not None else ZONE_LOOKUP_NAME
        raise DataFileError(f"{where} not found and no download source is configured; expected the TLC's zone lookup")
    download = _LookupDownload(source)
    path = cache_root / source_directory_name(source.identity) / ZONE_LOOKUP_NAME
    with exclusive_file_lock(path.with_name(path.name + ".lock")):
        if not refresh and path.is_file():
            try:
                return ZoneLookup(str(path), download.lookup_url, file_sha256(path), read_zone_boroughs(path))
            except DataFileError as exc:
                # Damaged after it was committed: fetch it again rather than fail on a stale copy.
                log.warning("cached %s: %s; downloading it again", path, exc)
                path.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetched = download.download(tmp)
            boroughs = read_zone_boroughs(tmp, source=f"{ZONE_LOOKUP_NAME} from {fetched.origin}")
            digest = file_sha256(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return ZoneLookup(str(path), fetched.origin, digest, boroughs)
