"""`taxiflow data fetch | ls | s3-blocks`, and training from S3 and from every trip type's layout."""

from __future__ import annotations

import json
import shutil

import boto3
import httpx
import pytest
from mlflow.tracking import MlflowClient

from taxiflow.io.month_cache import file_sha256
from tests.conftest import registered_versions
from tests.support.layouts import green_as
from tests.support.servers import FaultPlan, faulty_file_server, s3_server, stage_tlc_tree

# Dummy keys for the local moto server, passed through the environment as a user would.
S3_ENV = {"AWS_ACCESS_KEY_ID": "taxiflow-test-key", "AWS_SECRET_ACCESS_KEY": "taxiflow-test-secret-value", "AWS_DEFAULT_REGION": "us-east-1"}


def test_fetch_reports_failures_and_caches_only_intact_months(run_taxiflow, tlc_dir, tmp_path, state_dir):
    plan = FaultPlan({
        "green_tripdata_2023-01.parquet": ["503", "truncate"],
        "green_tripdata_2023-02.parquet": ["always500"],
        "green_tripdata_2023-03.parquet": ["reset", "stall"],
    }, stall_s=3.0)
    env = {"TAXIFLOW_DOWNLOAD_BACKOFF_S": "0.05", "TAXIFLOW_DOWNLOAD_TIMEOUT_S": "1", "TAXIFLOW_DOWNLOAD_RETRIES": "3"}
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        result = run_taxiflow("data", "fetch", "--taxi", "green", "--months", "2023-01..2023-03", "--tlc-base-url", base_url, env=env, server=False)
    assert result.returncode == 1
    assert "taxiflow: error: 1 of 3 month(s) failed: 2023-02" in result.stderr
    assert "FAILED  green 2023-02: green 2023-02: giving up after 4 attempts" in result.stdout
    assert "attempt 1/4 failed" in result.stderr  # retries are visible
    assert plan.hits == {"green_tripdata_2023-01.parquet": 3, "green_tripdata_2023-02.parquet": 4, "green_tripdata_2023-03.parquet": 3}

    listed = run_taxiflow("data", "ls", "--json", server=False)
    entries = {e["month"]: e for e in json.loads(listed.stdout)}
    assert sorted(entries) == ["2023-01", "2023-03"]
    for month, entry in entries.items():
        assert entry["sha256"] == file_sha256(tlc_dir / f"green_tripdata_{month}.parquet")
        assert entry["num_rows"] == {"2023-01": 68_211, "2023-03": 72_044}[month]
    assert not [p for p in (state_dir / "cache").rglob("*") if ".part" in p.name]

    text = run_taxiflow("data", "ls", server=False).stdout
    assert "green  2023-01" in text and "68,211" in text and "2 cached month(s)" in text


def test_training_from_an_s3_bucket_through_prefect_aws_blocks(run_taxiflow, tlc_dir, tmp_path, prefect_api):
    with s3_server(tmp_path / "moto") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_ENV.items() if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        s3.create_bucket(Bucket="taxi-data")
        for month in ("2023-01", "2023-02"):
            s3.upload_file(str(tlc_dir / f"green_tripdata_{month}.parquet"), "taxi-data", f"trip-data/green_tripdata_{month}.parquet")

        saved = run_taxiflow("data", "s3-blocks", "--bucket", "taxi-data", "--folder", "trip-data", "--endpoint-url", endpoint, "--block", "taxi-data", env=S3_ENV)
        assert saved.returncode == 0, saved.stderr[-2000:]
        # The secret is stored as a secret: the API never returns it in the clear.
        docs = httpx.post(f"{prefect_api}/block_documents/filter", json={"block_documents": {"name": {"any_": ["taxi-aws"]}}}).json()
        assert docs and S3_ENV["AWS_SECRET_ACCESS_KEY"] not in json.dumps(docs)

        # Training needs no AWS variables: credentials come from the blocks.
        result = run_taxiflow("train", "--source", "s3", "--s3-block", "taxi-data", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02", "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        assert (result.json()["rows_train"], result.json()["rows_val"]) == (65_946, 62_574)
        assert "s3://taxi-data/trip-data/green_tripdata_2023-01.parquet" in result.stderr
        assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr + saved.stdout + saved.stderr

        missing = run_taxiflow("train", "--source", "s3", "--s3-block", "taxi-data", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-03")
    assert missing.returncode == 1
    assert "taxiflow: error: green 2023-03 is not in the bucket: s3://taxi-data/trip-data/green_tripdata_2023-03.parquet does not exist" in missing.stderr


@pytest.mark.parametrize("taxi, features", [("yellow", "pu_do,distance"), ("fhv", "pu_do"), ("fhvhv", "pu_do,distance")])
def test_every_trip_type_trains_through_the_same_path(run_taxiflow, tlc_dir, tmp_path, state_dir, taxi, features):
    data_dir = tmp_path / "data"
    for month in ("2023-01", "2023-02"):
        green_as(taxi, tlc_dir / f"green_tripdata_{month}.parquet", data_dir / f"{taxi}_tripdata_{month}.parquet")
    result = run_taxiflow("train", "--taxi", taxi, "--features", features, "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(data_dir), "--source", "local", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    assert (summary["rows_train"], summary["rows_val"]) == (65_946, 62_574)
    assert summary["taxi"] == taxi and registered_versions(state_dir) == ["1"]


def test_drop_counts_reach_mlflow_and_a_prefect_table(run_taxiflow, tlc_dir, state_dir, prefect_api):
    result = run_taxiflow("train", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(tlc_dir), "--month-window-days", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["dropped_val"]["pickup_outside_month"] == 22
    assert summary["rows_val"] == 62_574 - 19
    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["dropped_val_pickup_outside_month"] == 22
    assert run.data.metrics["dropped_train_duration_out_of_range"] == summary["dropped_train"]["duration_out_of_range"] > 0
    flow_run_id = run.data.tags["taxiflow.prefect_flow_run_id"]
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["data-quality"]}}}).json()
    assert len(artifacts) == 1 and artifacts[0]["type"] == "table"
    rows = json.loads(artifacts[0]["data"])
    by_key = {(r["split"], r["reason"]): r["rows"] for r in rows}
    assert by_key[("validation", "pickup_outside_month")] == 22
    assert by_key[("validation", "kept")] == summary["rows_val"]
    assert sum(n for (split, _), n in by_key.items() if split == "train") == summary["rows_train_read"]


def test_local_source_never_downloads(run_taxiflow, tlc_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(tlc_dir / "green_tripdata_2023-01.parquet", data_dir)
    result = run_taxiflow("train", "--source", "local", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert "green 2023-02: " in result.stderr and "green_tripdata_2023-02.parquet not found and no download source is configured" in result.stderr
