"""A month's prepared trips, persisted once per identity (`core.identity.prepared_trips_key`) and reused.

In a backfill month M is the validation month of one pair and the training month of the next: it is
read, checked and prepared once. Why not Prefect's result persistence: its results are pickles of
the returned object, unverified on read, and not listable or prunable by what they hold; these
entries are plain parquet, checked before use, and `taxiflow cache ls|prune` manages them.

An entry is `<key>.parquet` plus a `<key>.json` record written after it (the record vouches for the
file: its sha256, size and row count). Both are written to temporary names and renamed into place
under the entry's lock, so a reader never sees half an entry. On use the file must match its record;
an entry that doesn't (truncated, overwritten, a record without its file) is removed and rebuilt,
never used.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from taxiflow.core.preparation import PreparedTrips
from taxiflow.io.failpoints import failpoint
from taxiflow.io.file_lock import exclusive_file_lock
from taxiflow.io.month_cache import file_sha256

log = logging.getLogger("taxiflow.cache")


@dataclass(frozen=True)
class PreparedEntry:
    """One cached month of prepared trips, as its record describes it."""

    key: str
    taxi: str
    month: str
    data_identity: str
    rows_read: int
    rows_kept: int
    dropped: dict[str, int]
    sha256: str
    size_bytes: int
    created_at: str
    path: str


class PreparedTripsCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def _record(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _lock(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    def get_or_prepare(
        self, key: str, *, taxi: str, month: str, data_identity: str, prepare: Callable[[], PreparedTrips], refresh: bool = False
    ) -> tuple[PreparedTrips, bool]:
        """(the month's prepared trips, True if they came from the cache); `prepare` runs on a miss or with `refresh`.

        Concurrent runs needing the same month wait for the first one's entry instead of preparing it twice.
        """
        with exclusive_file_lock(self._lock(key)):
            if not refresh and (hit := self._load(key)) is not None:
                return hit, True
            prepared = prepare()
            self._store(key, prepared, taxi=taxi, month=month, data_identity=data_identity)
            return prepared, False

    def _load(self, key: str) -> PreparedTrips | None:
        """The entry if its file matches its record; a damaged entry is removed (the caller holds its lock)."""
        record_path, file_path = self._record(key), self._file(key)
        try:
            entry = self._entry(json.loads(record_path.read_text()), file_path)
        except FileNotFoundError:
            if file_path.exists():  # a file without a record: an interrupted write
                log.warning("cached prepared trips %s have no record; rebuilding them", file_path.name)
                file_path.unlink(missing_ok=True)
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self._discard(key, f"unreadable record ({type(exc).__name__}: {exc})")
            return None
        problem = self._problem(entry, file_path)
        if problem is not None:
            self._discard(key, problem)
            return None
        frame = pl.read_parquet(file_path)
        os.utime(record_path)  # last use: what `prune` keeps longest
        return PreparedTrips(frame=frame, rows_read=entry.rows_read, dropped=dict(entry.dropped))

    @staticmethod
    def _problem(entry: PreparedEntry, file_path: Path) -> str | None:
        try:
            size = file_path.stat().st_size
        except FileNotFoundError:
            return "its parquet file is missing"
        if size != entry.size_bytes:
            return f"size {size:,} bytes does not match its record ({entry.size_bytes:,})"
        if (found := file_sha256(file_path)) != entry.sha256:
            return f"sha256 {found[:16]}… does not match its record ({entry.sha256[:16]}…)"
        try:
            rows = pq.read_metadata(file_path).num_rows
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError variants for a damaged file
            return f"parquet unreadable ({type(exc).__name__})"
        if rows != entry.rows_kept:
            return f"holds {rows:,} rows, its record {entry.rows_kept:,}"
        return None

    def _discard(self, key: str, problem: str) -> None:
        log.warning("cached prepared trips %s: %s; removed, rebuilding them", key[:16], problem)
        self._record(key).unlink(missing_ok=True)  # first: a record must never vouch for a missing file
        self._file(key).unlink(missing_ok=True)

    def _store(self, key: str, prepared: PreparedTrips, *, taxi: str, month: str, data_identity: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._record(key).unlink(missing_ok=True)  # an old record must not vouch for the new file
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".parquet.part", dir=self.root)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            # lz4: a cached month is read far more often than it is written, and lz4 decodes fastest.
            prepared.frame.write_parquet(tmp, compression="lz4", statistics=False)
            failpoint("prepared-cache-write")
            record = {
                "key": key,
                "taxi": taxi,
                "month": month,
                "data_identity": data_identity,
                "rows_read": prepared.rows_read,
                "rows_kept": prepared.rows_kept,
                "dropped": prepared.dropped,
                "sha256": file_sha256(tmp),
                "size_bytes": tmp.stat().st_size,
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            os.replace(tmp, self._file(key))
            self._write_record(key, record)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_record(self, key: str, record: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".json.part", dir=self.root)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(record, out)
            os.replace(tmp, self._record(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _entry(record: dict, file_path: Path) -> PreparedEntry:
        return PreparedEntry(**{**record, "path": str(file_path)})

    def entries(self) -> list[tuple[PreparedEntry, float]]:
        """Every entry with a readable record, and when it was last used (epoch seconds); oldest use first."""
        found = []
        for record_path in self.root.glob("*.json"):
            try:
                entry = self._entry(json.loads(record_path.read_text()), record_path.with_suffix(".parquet"))
                found.append((entry, record_path.stat().st_mtime))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda item: item[1])

    def remove(self, key: str) -> int:
        """Remove one entry under its lock; the bytes freed."""
        with exclusive_file_lock(self._lock(key)):
            freed = sum(p.stat().st_size for p in (self._file(key), self._record(key)) if p.exists())
            self._record(key).unlink(missing_ok=True)
            self._file(key).unlink(missing_ok=True)
        # The empty lock file stays: removing it would let a waiter and a newcomer lock different files.
        return freed
