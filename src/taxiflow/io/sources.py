"""Where months come from: the TLC over HTTP, or an S3 bucket through a prefect-aws S3Bucket block.

A source writes one complete object to a path it is given and says where it came from; the month
cache (month_cache.py) decides where that path is, verifies it and commits it.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from taxiflow.core.errors import DownloadError, MonthNotAvailableError, TaxiflowError
from taxiflow.core.schema import tlc_file_name

log = logging.getLogger("taxiflow.sources")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchedObject:
    origin: str  # URL or s3:// URI
    etag: str | None


class MonthSource(Protocol):
    identity: str  # where months come from; part of the cache key

    def fetch(self, taxi: str, month: str, dest: Path) -> FetchedObject: ...


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter in [0.5, 1.5) of the nominal delay."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())


class HttpSource:
    """The TLC's CDN (or any server laid out like it): `{base_url}/{taxi}_tripdata_{YYYY-MM}.parquet`."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0, policy: RetryPolicy = RetryPolicy(), progress: bool | None = None):
        self.base_url = base_url.rstrip("/") + "/"
        self.identity = self.base_url
        self.timeout_s = timeout_s
        self.policy = policy
        self.progress = sys.stderr.isatty() if progress is None else progress

    def url(self, taxi: str, month: str) -> str:
        return self.base_url + tlc_file_name(taxi, month)

    def fetch(self, taxi: str, month: str, dest: Path) -> FetchedObject:
        url = self.url(taxi, month)
        attempt = 1
        while True:
            try:
                etag = self._fetch_once(url, dest, taxi=taxi, month=month)
                return FetchedObject(origin=url, etag=etag)
            except DownloadError as exc:
                if attempt > self.policy.retries:
                    raise DownloadError(f"{taxi} {month}: giving up after {attempt} attempts: {exc}") from None
                delay = self.policy.delay(attempt)
                log.warning("%s %s: attempt %d/%d failed (%s); retrying in %.1fs", taxi, month, attempt, self.policy.retries + 1, exc, delay)
                time.sleep(delay)
                attempt += 1

    def _fetch_once(self, url: str, dest: Path, *, taxi: str, month: str) -> str | None:
        try:
            with httpx.stream("GET", url, timeout=self.timeout_s, follow_redirects=True) as response:
                status = response.status_code
                if status in (403, 404, 410):
                    # The TLC's CDN answers 403 for files it doesn't have.
                    raise MonthNotAvailableError(f"{taxi} {month} is not published: {url} answered HTTP {status}")
                if status == 429 or status >= 500:
                    raise DownloadError(f"{url}: HTTP {status}")
                if status >= 400:
                    raise TaxiflowError(f"{url}: HTTP {status} (not retried)")
                expected = response.headers.get("content-length")
                received = 0
                with open(dest, "wb") as out, _progress(self.progress, f"{taxi} {month}", expected) as advance:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        advance(len(chunk))
                etag = response.headers.get("etag")
        except httpx.HTTPError as exc:
            # Timeouts, resets, and bodies cut short before their declared length.
            raise DownloadError(f"{url}: {type(exc).__name__}: {exc or 'connection failed'}") from None
        if expected is not None and received != int(expected):
            raise DownloadError(f"{url}: body truncated ({received:,} of {int(expected):,} bytes)")
        return etag


class _NoProgress:
    def __enter__(self):
        return lambda n: None

    def __exit__(self, *exc) -> None:
        return None


def _progress(enabled: bool, label: str, total: str | None):
    """A download progress bar on an interactive terminal; nothing in logs or pipes."""
    if not enabled:
        return _NoProgress()
    from contextlib import contextmanager

    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    @contextmanager
    def bar():
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as progress:
            task = progress.add_task(label, total=int(total) if total else None)
            yield lambda n: progress.advance(task, n)

    return bar()


class S3Source:
    """Months in an S3 bucket, through a saved prefect-aws `S3Bucket` block (credentials live in the block)."""

    def __init__(self, bucket) -> None:  # prefect_aws.S3Bucket
        self.bucket = bucket
        endpoint = bucket.credentials.aws_client_parameters.endpoint_url or "aws"
        self.identity = f"s3://{bucket.bucket_name}/{bucket.bucket_folder.strip('/')}@{endpoint}"

    @classmethod
    def from_block(cls, block_name: str) -> S3Source:
        from prefect_aws import S3Bucket

        try:
            return cls(S3Bucket.load(block_name))
        except ValueError as exc:
            raise TaxiflowError(f"S3Bucket block {block_name!r} not found: create it with `taxiflow data s3-blocks` ({exc})") from None

    def fetch(self, taxi: str, month: str, dest: Path) -> FetchedObject:
        from botocore.exceptions import BotoCoreError, ClientError

        name = tlc_file_name(taxi, month)
        key = self.bucket._resolve_path(name)  # bucket_folder + name, as the block itself resolves it
        uri = f"s3://{self.bucket.bucket_name}/{key}"
        client = self.bucket.credentials.get_s3_client()
        try:
            head = client.head_object(Bucket=self.bucket.bucket_name, Key=key)
            self.bucket.download_object_to_path(name, dest)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise MonthNotAvailableError(f"{taxi} {month} is not in the bucket: {uri} does not exist") from None
            raise DownloadError(f"{uri}: {code or exc}") from None
        except BotoCoreError as exc:
            raise DownloadError(f"{uri}: {type(exc).__name__}: {exc}") from None
        return FetchedObject(origin=uri, etag=head.get("ETag", "").strip('"') or None)
