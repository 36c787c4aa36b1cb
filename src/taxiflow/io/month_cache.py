"""A local cache of verified month files, keyed by (trip type, month, source identity).

An entry is a parquet file plus a JSON sidecar written after it; only entries with a sidecar
that matches the file count. Fetches take a per-entry file lock, download to a temporary file in
the same directory, verify it, and rename it into place: concurrent runs never see a partial file,
and a second run needs no network at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from taxiflow.core.schema import tlc_file_name
from taxiflow.io.sources import MonthSource

_CHUNK = 1 << 20


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
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _slug(identity: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9]+", "-", identity.split("://", 1)[-1]).strip("-")[:40]
    return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


class MonthCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _entry(self, source: MonthSource, taxi: str, month: str) -> Path:
        return self.root / _slug(source.identity) / tlc_file_name(taxi, month)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def _read(self, path: Path) -> TripFile | None:
        sidecar = self._sidecar(path)
        try:
            meta = json.loads(sidecar.read_text())
            if path.stat().st_size != meta["size_bytes"]:
                return None
        except (OSError, ValueError, KeyError):
            return None
        return TripFile(**{**meta, "path": str(path)})

    def get(self, source: MonthSource, taxi: str, month: str) -> TripFile | None:
        return self._read(self._entry(source, taxi, month))

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def fetch(self, source: MonthSource, taxi: str, month: str, verify: Callable[[Path], int], *, refresh: bool = False) -> TripFile:
        """The cached entry, or fetch + verify (returns the row count, raises if unusable) + commit."""
        path = self._entry(source, taxi, month)
        with self._locked(path):
            if not refresh and (hit := self._read(path)) is not None:
                return hit
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                fetched = source.fetch(taxi, month, tmp)
                rows = verify(tmp)
                entry = TripFile(
                    taxi=taxi, month=month, path=str(path), sha256=file_sha256(tmp), size_bytes=tmp.stat().st_size,
                    num_rows=rows, origin=fetched.origin, etag=fetched.etag,
                    fetched_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                )
                self._sidecar(path).unlink(missing_ok=True)  # an old sidecar must not vouch for the new file
                os.replace(tmp, path)
                sidecar_tmp = self._sidecar(tmp)
                sidecar_tmp.write_text(json.dumps({k: v for k, v in asdict(entry).items() if k != "path"}))
                os.replace(sidecar_tmp, self._sidecar(path))
                return entry
            finally:
                tmp.unlink(missing_ok=True)
                self._sidecar(tmp).unlink(missing_ok=True)

    def entries(self) -> list[TripFile]:
        found = (self._read(p) for p in sorted(self.root.glob("*/*.parquet")))
        return [e for e in found if e is not None]
