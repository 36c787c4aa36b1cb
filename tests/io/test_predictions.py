"""Prediction files: published whole or not at all, locally (rename) and to S3 (upload of the completed file)."""

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from taxiflow.io.failpoints import InjectedFailure
from taxiflow.io.predictions import LocalPredictionSink, S3PredictionSink, predictions_key
from tests.support.servers import s3_server


def _write_two_batches(sink) -> None:
    sink.write(np.arange(3), np.array([1.5, 2.5, 3.5], dtype=np.float32))
    sink.write(np.arange(3, 5), np.array([4.0, 5.0]))


def test_a_local_file_appears_only_when_committed_and_a_failure_leaves_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / predictions_key("green", "2023-03", "3")
    with LocalPredictionSink(final, "3") as sink:
        _write_two_batches(sink)
        assert not final.exists() and [p.name for p in final.parent.iterdir()] == [f".predictions-v3.parquet.{os.getpid()}.partial"]
        assert sink.commit() == str(final)
    table = pq.read_table(final)
    assert table.column_names == ["ride_index", "prediction", "model_version"]
    assert table.to_pydict() == {"ride_index": [0, 1, 2, 3, 4], "prediction": [1.5, 2.5, 3.5, 4.0, 5.0], "model_version": ["3"] * 5}

    before = final.read_bytes()
    monkeypatch.setenv("TAXIFLOW_FAILPOINTS", "write-predictions")
    with pytest.raises(InjectedFailure), LocalPredictionSink(final, "4") as failing:
        failing.write(np.arange(2), np.array([9.0, 9.0]))  # written, then the failpoint fires
    assert final.read_bytes() == before and [p.name for p in final.parent.iterdir()] == [final.name]


def test_a_killed_writers_part_is_removed_by_the_next_writer_and_a_live_ones_is_kept(tmp_path):
    final = tmp_path / predictions_key("green", "2023-03", "3")
    final.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer that is gone: its PID no longer runs
    orphan = final.with_name(f".{final.name}.{dead.pid}.partial")
    live = final.with_name(f".{final.name}.1.partial")  # PID 1 always runs: maybe a writer still at work
    unrelated = final.with_name(".other.parquet.99999999.partial")
    for part in (orphan, live, unrelated):
        part.write_bytes(b"half a file")
    with LocalPredictionSink(final, "3") as sink:
        _write_two_batches(sink)
        sink.commit()
    assert sorted(p.name for p in final.parent.iterdir()) == sorted([final.name, live.name, unrelated.name])


@pytest.mark.servers  # a local S3 server
def test_s3_gets_the_completed_file_or_nothing(tmp_path, monkeypatch):
    import boto3
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with s3_server(tmp_path / "moto") as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="taxi-data")
        parameters = AwsClientParameters(endpoint_url=endpoint)
        credentials = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1", aws_client_parameters=parameters)
        bucket = S3Bucket(bucket_name="taxi-data", bucket_folder="trips", credentials=credentials)
        client = credentials.get_s3_client()

        monkeypatch.setenv("TAXIFLOW_FAILPOINTS", "upload-predictions")
        with pytest.raises(InjectedFailure), S3PredictionSink(bucket, "predictions/" + predictions_key("green", "2023-03", "3"), "3") as failing:
            _write_two_batches(failing)
            failing.commit()
        assert client.list_objects_v2(Bucket="taxi-data").get("KeyCount") == 0
        monkeypatch.delenv("TAXIFLOW_FAILPOINTS")

        with S3PredictionSink(bucket, "predictions/" + predictions_key("green", "2023-03", "3"), "3") as sink:
            _write_two_batches(sink)
            assert sink.commit() == "s3://taxi-data/trips/predictions/green/2023-03/predictions-v3.parquet"
        client.download_file("taxi-data", "trips/predictions/green/2023-03/predictions-v3.parquet", str(tmp_path / "got.parquet"))
    assert pq.read_table(tmp_path / "got.parquet").column("prediction").to_pylist() == [1.5, 2.5, 3.5, 4.0, 5.0]
