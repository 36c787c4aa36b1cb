"""Getting a month's TLC file: from a local directory, else downloaded from the TLC.

Downloads stream to a temporary file beside the target and are renamed into place only when
complete and readable as parquet, so a crash or a concurrent run never leaves a half-written file
under the TLC name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from taxiflow.core.errors import DataFileError, DownloadError, MonthNotAvailableError
from taxiflow.core.schema import tlc_file_name

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
    origin: str  # "local" or the URL it was downloaded from


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parquet_row_count(path: Path, *, source: str) -> int:
    """Read the parquet footer; a file that isn't parquet fails here with a clear message."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError variants for junk
        raise DataFileError(f"{source}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


def _verified(taxi: str, month: str, path: Path, origin: str) -> TripFile:
    rows = parquet_row_count(path, source=str(path))
    return TripFile(taxi, month, str(path), file_sha256(path), path.stat().st_size, rows, origin)


def month_url(base_url: str, taxi: str, month: str) -> str:
    return base_url.rstrip("/") + "/" + tlc_file_name(taxi, month)


def download_month(url: str, target: Path, *, taxi: str, month: str, timeout_s: float) -> TripFile:
    """Stream `url` into `target` atomically; verify length and parquet footer before renaming."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
                    if response.status_code in (403, 404):
                        # The TLC's CDN answers 403 for files it doesn't have.
                        raise MonthNotAvailableError(
                            f"{taxi} {month} is not published: {url} answered HTTP {response.status_code}"
                        )
                    if response.status_code >= 400:
                        raise DownloadError(f"downloading {url}: HTTP {response.status_code}")
                    expected = response.headers.get("content-length")
                    received = 0
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
            except httpx.HTTPError as exc:
                raise DownloadError(f"downloading {url}: {type(exc).__name__}: {exc}") from None
            if expected is not None and received != int(expected):
                raise DownloadError(f"downloading {url}: body truncated ({received} of {expected} bytes)")
            out.flush()
            os.fsync(out.fileno())
        parquet_row_count(tmp, source=f"{url} (downloaded)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return _verified(taxi, month, target, url)


def get_month_file(taxi: str, month: str, *, data_dir: Path, base_url: str | None, timeout_s: float) -> TripFile:
    """The month's file from `data_dir` if present, else downloaded into `data_dir` from `base_url`."""
    path = data_dir / tlc_file_name(taxi, month)
    if path.is_file():
        return _verified(taxi, month, path, "local")
    if not base_url:
        raise MonthNotAvailableError(f"{taxi} {month}: {path} not found and downloads are disabled")
    return download_month(month_url(base_url, taxi, month), path, taxi=taxi, month=month, timeout_s=timeout_s)
