"""A local cache of verified month files, keyed by (trip type, month, source identity).

An entry is a parquet file plus a JSON sidecar written after it; only entries with a sidecar
that matches the file count. Fetches take a per-entry file lock, download to a temporary file in
the same directory, verify it, and rename it into place: concurrent runs never see a partial file,
and a second run needs no network at all.

The sidecar records the file's sha256 and a stat stamp (size, mtime, ctime, inode) taken when the
record was written. On use, an unchanged stamp plus a readable parquet footer with the recorded
row count is enough; any change to the stamp (a write, even one that keeps the size and sets the
mtime back: the ctime can't be set back; a copy or replacement: new inode) costs one full sha256
before the file is served, after which the stamp is renewed. Sidecars written before stamps
existed are verified the same way, once. An entry that fails is not served: with the entry's lock
held it is removed, so `fetch` downloads it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from io import BufferedReader
from pathlib import Path

import pyarrow.parquet as pq

from taxiflow.core.schema import tlc_file_name
from taxiflow.io.sources import MonthSource

log = logging.getLogger("taxiflow.cache")


@dataclass(frozen=True)
class TripFile:
    """A verified local parquet file for one trip type and month."""

    taxi: str
    month: str
    path: str
    sha256: str
    size_bytes: int
    num_rows: int
    origin: str  # "local", a URL or an s3:// URI
    etag: str | None = None
    fetched_at: str | None = None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return _sha256_of(fh)


def _sha256_of(fh: BufferedReader) -> str:
    fh.seek(0)
    return hashlib.file_digest(fh, "sha256").hexdigest()


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What any change to a file through the filesystem alters (see the module docstring)."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _problem(fh: BufferedReader, entry: TripFile, recorded_stamp: dict | None, stamp: dict[str, int]) -> str | None:
    """Why the open file `fh` (stat stamp `stamp`) no longer matches its record, or None if it does."""
    if stamp["size"] != entry.size_bytes:
        return f"size {stamp['size']:,} bytes does not match its record ({entry.size_bytes:,} bytes)"
    if recorded_stamp != stamp:
        # Written to, replaced, copied, or recorded before stamps existed: only the digest can tell.
        if (digest := _sha256_of(fh)) != entry.sha256:
            return f"sha256 {digest[:16]}… does not match its record ({entry.sha256[:16]}…)"
    # Cheap, and catches a damaged footer that left the stamp alone.
    try:
        fh.seek(0)
        rows = pq.read_metadata(fh).num_rows
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError variants for junk
        return f"parquet footer unreadable ({type(exc).__name__}: {exc})"
    if rows != entry.num_rows:
        return f"parquet footer says {rows:,} rows, its record {entry.num_rows:,}"
    return None


def source_directory_name(identity: str) -> str:
    """The cache directory of one source: readable, and unique per source identity."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", identity.split("://", 1)[-1]).strip("-")[:40]
    return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


class MonthCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _entry(self, source: MonthSource, taxi: str, month: str) -> Path:
        return self.root / source_directory_name(source.identity) / tlc_file_name(taxi, month)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def _read(self, path: Path, *, locked: bool) -> TripFile | None:
        """The entry at `path` if its file still matches its record.

        With the entry's lock held (`locked`), a verified entry's stamp is renewed and a failed
        entry is removed; without it, nothing is written (a fetch may be committing the entry).
        """
        sidecar = self._sidecar(path)
        try:
            meta = json.loads(sidecar.read_text())
            recorded_stamp = meta.pop("stat", None)
            entry = TripFile(**{**meta, "path": str(path)})
            fh = open(path, "rb")
        except (OSError, ValueError, TypeError, AttributeError):
            return None  # no entry, or no record that could vouch for one
        with fh:
            # Stamp before reading: a write during the check changes the stamp and is seen next time.
            stamp = _stamp(os.fstat(fh.fileno()))
            try:
                problem = _problem(fh, entry, recorded_stamp, stamp)
            except OSError as exc:
                problem = f"unreadable ({exc})"
        if problem is None:
            if locked and recorded_stamp != stamp:
                self._write_record(path, entry, stamp)
            return entry
        log.warning("cached %s: %s; not using it%s", path, problem, " (removed)" if locked else "")
        if locked:
            sidecar.unlink(missing_ok=True)  # first, so the record never vouches for a missing file
            path.unlink(missing_ok=True)
        return None

    def _write_record(self, path: Path, entry: TripFile, stamp: dict[str, int]) -> None:
        """Atomically (re)write `path`'s sidecar; the caller holds the entry's lock."""
        record = {k: v for k, v in asdict(entry).items() if k != "path"} | {"stat": stamp}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.json.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(record, out)
            os.replace(tmp, self._sidecar(path))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, source: MonthSource, taxi: str, month: str) -> TripFile | None:
        path = self._entry(source, taxi, month)
        with self._try_locked(path) as locked:
            return self._used(self._read(path, locked=locked))

    def _used(self, entry: TripFile | None) -> TripFile | None:
        """Mark a run's use of the entry: least recently used entries are what `taxiflow cache prune` removes first."""
        if entry is not None:
            with contextlib.suppress(OSError):
                os.utime(self._sidecar(Path(entry.path)))
        return entry

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _try_locked(self, path: Path) -> Iterator[bool]:
        """The entry's lock if it is free now (True); readers don't wait behind a download (False)."""
        try:
            lock = open(path.with_name(path.name + ".lock"), "a")
        except OSError:  # no entry directory: nothing to lock, nothing to write
            yield False
            return
        with lock:  # closing the file releases the lock
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                locked = False
            yield locked

    def fetch(self, source: MonthSource, taxi: str, month: str, verify: Callable[[Path], int], *, refresh: bool = False) -> TripFile:
        """The cached entry, or fetch + verify (returns the row count, raises if unusable) + commit."""
        path = self._entry(source, taxi, month)
        with self._locked(path):
            if not refresh and (hit := self._used(self._read(path, locked=True))) is not None:
                return hit
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                fetched = source.fetch(taxi, month, tmp)
                rows = verify(tmp)
                entry = TripFile(
                    taxi=taxi,
                    month=month,
                    path=str(path),
                    sha256=file_sha256(tmp),
                    size_bytes=tmp.stat().st_size,
                    num_rows=rows,
                    origin=fetched.origin,
                    etag=fetched.etag,
                    fetched_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                )
                self._sidecar(path).unlink(missing_ok=True)  # an old sidecar must not vouch for the new file
                os.replace(tmp, path)
                # Stamped after the rename, which changes the ctime.
                self._write_record(path, entry, _stamp(path.stat()))
                return entry
            finally:
                tmp.unlink(missing_ok=True)

    def remove(self, entry: TripFile) -> int:
        """Remove one entry under its lock (record first, so it never vouches for a missing file); the bytes freed."""
        path = Path(entry.path)
        with self._locked(path):
            sidecar = self._sidecar(path)
            freed = sum(p.stat().st_size for p in (path, sidecar) if p.exists())
            sidecar.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        return freed

    def last_used(self, entry: TripFile) -> float:
        """When the entry was last verified or used (epoch seconds)."""
        try:
            return self._sidecar(Path(entry.path)).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def entries(self) -> list[TripFile]:
        found = []
        for path in sorted(self.root.glob("*/*.parquet")):
            with self._try_locked(path) as locked:
                found.append(self._read(path, locked=locked))
        return [e for e in found if e is not None]
