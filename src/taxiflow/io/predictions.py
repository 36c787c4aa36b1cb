"""Where a scoring run's predictions go: one parquet file, locally or in the S3 bucket, never partial.

A sink writes batches into a temporary file and publishes it only on `commit`: locally with
`os.replace` from a hidden `.<name>.<pid>.partial` file in the same directory (a rename within one
file system is atomic: readers see the old file or the new one, never a part); to S3 by uploading
the completed local file (an object appears only once its upload completes). Any failure before the
commit deletes the temporary file. A process killed while writing can leave its hidden `.partial`
file, never a file under the final name; the next sink for that file removes it (its PID is gone).

Columns: `ride_index` (the ride's row position in the source month file), `prediction` (minutes),
`model_version` (the registered version that predicted it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taxiflow.io.failpoints import failpoint

PREDICTION_SCHEMA = pa.schema([("ride_index", pa.int64()), ("prediction", pa.float64()), ("model_version", pa.string())])
S3_OUTPUT = "s3"  # `--output s3`: the bucket of the S3Bucket block


def predictions_key(taxi: str, month: str, version: str) -> str:
    """`green/2023-03/predictions-v3.parquet`: under the output root (a directory, or the bucket's folder + predictions/)."""
    return f"{taxi}/{month}/predictions-v{version}.parquet"


class PredictionSink(Protocol):
    location: str  # where the file is once committed

    def write(self, ride_index: np.ndarray, prediction: np.ndarray) -> None: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...


class _ParquetPart:
    """A parquet file being written batch by batch, at a temporary path."""

    def __init__(self, path: Path, model_version: str) -> None:
        self.path = path
        self.model_version = model_version
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(str(path), PREDICTION_SCHEMA)
        self.rows = 0

    def write(self, ride_index: np.ndarray, prediction: np.ndarray) -> None:
        if self._writer is None:
            raise RuntimeError(f"{self.path}: already closed")
        n = len(ride_index)
        # One dictionary entry repeated, cast to plain strings in C++: no Python string per row.
        version = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([self.model_version])).cast(pa.string())
        batch = pa.RecordBatch.from_arrays(
            [pa.array(np.asarray(ride_index, dtype=np.int64)), pa.array(np.asarray(prediction, dtype=np.float64)), version], schema=PREDICTION_SCHEMA
        )
        self._writer.write_batch(batch)
        self.rows += n
        failpoint("write-predictions")  # tests: a failure with part of the file written

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def discard(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the file is deleted either way
            pass
        self.path.unlink(missing_ok=True)


def _remove_orphaned_parts(path: Path) -> None:
    """Delete `path`'s temporary files left by killed writers: those whose writer's PID no longer runs.

    A part whose PID runs (its writer, or an unrelated process that reused the PID) is left alone.
    """
    for part in path.parent.glob(f".{path.name}.*.partial"):
        pid = part.name[len(path.name) + 2 : -len(".partial")]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            part.unlink(missing_ok=True)


class LocalPredictionSink:
    """Predictions into `path`, published atomically on `commit`."""

    def __init__(self, path: Path, model_version: str) -> None:
        self.final = path
        self.location = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphaned_parts(path)
        self._part = _ParquetPart(path.with_name(f".{path.name}.{os.getpid()}.partial"), model_version)
        self._done = False

    def write(self, ride_index: np.ndarray, prediction: np.ndarray) -> None:
        self._part.write(ride_index, prediction)

    def commit(self) -> str:
        self._part.close()
        with open(self._part.path, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the name points at it
        os.replace(self._part.path, self.final)
        self._done = True
        return self.location

    def abort(self) -> None:
        if not self._done:
            self._part.discard()

    def __enter__(self) -> LocalPredictionSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.abort()


class S3PredictionSink:
    """Predictions written to a local temporary file, uploaded to the bucket as a whole on `commit`."""

    def __init__(self, bucket, key: str, model_version: str) -> None:  # prefect_aws.S3Bucket
        self.bucket = bucket
        self.key = bucket._resolve_path(key)  # the block's folder + key, as the block itself resolves paths
        self.location = f"s3://{bucket.bucket_name}/{self.key}"
        self._tmp = tempfile.TemporaryDirectory(prefix="taxiflow-predictions-")
        self._part = _ParquetPart(Path(self._tmp.name) / "predictions.parquet", model_version)
        self._done = False

    def write(self, ride_index: np.ndarray, prediction: np.ndarray) -> None:
        self._part.write(ride_index, prediction)

    def commit(self) -> str:
        self._part.close()
        failpoint("upload-predictions")
        client = self.bucket.credentials.get_s3_client()
        client.upload_file(Filename=str(self._part.path), Bucket=self.bucket.bucket_name, Key=self.key)
        self._done = True
        self._tmp.cleanup()
        return self.location

    def abort(self) -> None:
        if not self._done:
            self._part.discard()
            self._tmp.cleanup()

    def __enter__(self) -> S3PredictionSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.abort()
