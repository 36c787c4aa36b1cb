"""`taxiflow data fetch | ls | s3-blocks`, and training from S3 and from every trip type's layout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import registered_versions
from tests.support.layouts import green_as
from tests.support.servers import VENV_BIN, FaultPlan, Trickle, base_env, faulty_file_server, s3_server, stage_tlc_tree, trickle_file_server

# Dummy keys for the local moto server, passed through the environment as a user would.
S3_ENV = {"AWS_ACCESS_KEY_ID": "taxiflow-test-key", "AWS_SECRET_ACCESS_KEY": "taxiflow-test-secret-value", "AWS_DEFAULT_REGION": "us-east-1"}


def test_fetch_reports_failures_and_caches_only_intact_months(run_taxiflow, tlc_dir, tmp_path, state_dir):
    plan = FaultPlan(
        {
            "green_tripdata_2023-01.parquet": ["503", "truncate"],
            "green_tripdata_2023-02.parquet": ["always500"],
            "green_tripdata_2023-03.parquet": ["reset", "stall"],
        },
        stall_s=3.0,
    )
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
        # The published files' digests (hashlib here, and the README's first 16 hex digits) and row counts.
        expected_sha = hashlib.sha256((tlc_dir / f"green_tripdata_{month}.parquet").read_bytes()).hexdigest()
        assert entry["sha256"] == expected_sha and expected_sha.startswith({"2023-01": "9f0e03dd7f8f94ec", "2023-03": "69ab2c3b515ad1dd"}[month])
        assert entry["num_rows"] == {"2023-01": 68_211, "2023-03": 72_044}[month]
    assert not [p for p in (state_dir / "cache").rglob("*") if ".part" in p.name]

    text = run_taxiflow("data", "ls", server=False).stdout
    assert "green  2023-01" in text and "68,211" in text and "2 cached month(s)" in text


def _flock_waiters(lock: Path) -> int:
    """How many flock requests are queued on `lock` (Linux lists them in /proc/locks as "->" lines)."""
    st = lock.stat()
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line.split() and ident in line.split())


def test_two_fetch_processes_at_once_download_each_month_once(tlc_dir, tmp_path, state_dir):
    names = ["green_tripdata_2023-01.parquet", "green_tripdata_2023-02.parquet"]
    trickle = Trickle()
    env = base_env(TAXIFLOW_STATE_DIR=str(state_dir), TAXIFLOW_DOWNLOAD_TIMEOUT_S="60")
    with trickle_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), trickle) as base_url:
        cmd = [str(VENV_BIN / "taxiflow"), "data", "fetch", "--taxi", "green", "--months", "2023-01..2023-02", "--tlc-base-url", base_url]
        procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            assert trickle.wait_for_requests(names, timeout_s=60), f"downloads never started: the server saw {trickle.hits}"
            locks = [next((state_dir / "cache").glob(f"*/{name}.lock")) for name in names]  # taken before the request
            # The server holds every download in flight until the other process is queued on that
            # month's lock: the two really overlap. /proc/locks offers nothing to block on, so poll it.
            deadline = time.monotonic() + 60
            while not all(_flock_waiters(lock) for lock in locks):
                assert all(p.poll() is None for p in procs), "a fetch exited while the downloads were held"
                assert time.monotonic() < deadline, f"the other process never queued on each month's lock (waiters: {[_flock_waiters(lock) for lock in locks]})"
                time.sleep(0.02)
        finally:
            trickle.release.set()
            outputs = []
            for p in procs:
                try:
                    outputs.append(p.communicate(timeout=120))
                except subprocess.TimeoutExpired:
                    p.kill()
                    outputs.append(p.communicate())
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "ok      green 2023-01: 68,211 rows" in out and "ok      green 2023-02: 64,809 rows" in out
    assert trickle.hits == {name: 1 for name in names}, "the process that waited must find the month cached"
    entry_dir = locks[0].parent
    assert sorted(p.name for p in entry_dir.iterdir()) == sorted(f"{n}{ext}" for n in names for ext in ("", ".json", ".lock")), "no partial file may remain"
    for name in names:
        assert hashlib.sha256((entry_dir / name).read_bytes()).hexdigest() == hashlib.sha256((tlc_dir / name).read_bytes()).hexdigest()


def test_training_from_an_s3_bucket_through_prefect_aws_blocks(run_taxiflow, tlc_dir, tmp_path, prefect_api):
    with s3_server(tmp_path / "moto") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_ENV.items() if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        s3.create_bucket(Bucket="taxi-data")
        for month in ("2023-01", "2023-02"):
            s3.upload_file(str(tlc_dir / f"green_tripdata_{month}.parquet"), "taxi-data", f"trip-data/green_tripdata_{month}.parquet")

        saved = run_taxiflow(
            "data", "s3-blocks", "--bucket", "taxi-data", "--folder", "trip-data", "--endpoint-url", endpoint, "--block", "taxi-data", env=S3_ENV
        )
        assert saved.returncode == 0, saved.stderr[-2000:]
        # The secret is stored as a secret: the API never returns it in the clear.
        docs = httpx.post(f"{prefect_api}/block_documents/filter", json={"block_documents": {"name": {"any_": ["taxi-aws"]}}}).json()
        assert docs and S3_ENV["AWS_SECRET_ACCESS_KEY"] not in json.dumps(docs)

        # Training needs no AWS variables: credentials come from the blocks.
        result = run_taxiflow(
            "train", "--source", "s3", "--s3-block", "taxi-data", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02", "--json"
        )
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
    result = run_taxiflow(
        "train",
        "--taxi",
        taxi,
        "--features",
        features,
        "--model",
        "linear",
        "--train-month",
        "2023-01",
        "--val-month",
        "2023-02",
        "--data-dir",
        str(data_dir),
        "--source",
        "local",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    assert (summary["rows_train"], summary["rows_val"]) == (65_946, 62_574)
    assert summary["taxi"] == taxi and registered_versions(state_dir) == ["1"]


def _window_drops(path: Path, first_day: str, after_last_day: str) -> dict[str, int]:
    """Reference, in plain numpy on the file's columns: rows dropped with a pickup window, by first reason.

    Only for months with no nulls, bad zones, negative distances or reversed timestamps (2023-01 and
    2023-02 have none), where a pickup outside the window, then a duration outside 1..60 min, are
    the only reasons.
    """
    raw = pq.read_table(path, columns=["lpep_pickup_datetime", "lpep_dropoff_datetime"])
    pickup, dropoff = (raw[c].to_numpy() for c in ("lpep_pickup_datetime", "lpep_dropoff_datetime"))
    outside = (pickup < np.datetime64(first_day)) | (pickup >= np.datetime64(after_last_day))
    minutes = (dropoff - pickup) / np.timedelta64(1, "m")
    in_range = (minutes >= 1) & (minutes <= 60)
    return {"pickup_outside_month": int(outside.sum()), "duration_out_of_range": int((~outside & ~in_range).sum()), "kept": int((~outside & in_range).sum())}


def test_drop_counts_reach_mlflow_and_a_prefect_table(run_taxiflow, tlc_dir, state_dir, prefect_api):
    result = run_taxiflow(
        "train", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(tlc_dir), "--month-window-days", "1", "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    # Expected counts computed here from the files (window: each month +- 1 day); 68,211 / 64,809
    # rows read and 65,946 / 62,574 kept without a window are the README's.
    train_ref = _window_drops(tlc_dir / "green_tripdata_2023-01.parquet", "2022-12-31", "2023-02-02")
    val_ref = _window_drops(tlc_dir / "green_tripdata_2023-02.parquet", "2023-01-31", "2023-03-02")
    assert val_ref["pickup_outside_month"] == 22 and val_ref["kept"] == 62_574 - 19  # as documented in README.md
    assert sum(train_ref.values()) == 68_211 and sum(val_ref.values()) == 64_809
    assert summary["dropped_val"] == {k: v for k, v in val_ref.items() if k != "kept"}
    assert summary["dropped_train"] == {k: v for k, v in train_ref.items() if k != "kept"}
    assert (summary["rows_train_read"], summary["rows_train"], summary["rows_val"]) == (68_211, train_ref["kept"], val_ref["kept"])
    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["dropped_val_pickup_outside_month"] == 22
    assert run.data.metrics["dropped_train_duration_out_of_range"] == train_ref["duration_out_of_range"]
    assert run.data.metrics["dropped_train_pickup_outside_month"] == train_ref["pickup_outside_month"]
    flow_run_id = run.data.tags["taxiflow.prefect_flow_run_id"]
    artifacts = httpx.post(
        f"{prefect_api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["data-quality"]}}}
    ).json()
    assert len(artifacts) == 1 and artifacts[0]["type"] == "table"
    rows = json.loads(artifacts[0]["data"])
    by_key = {(r["split"], r["reason"]): r["rows"] for r in rows}
    assert {reason: n for (split, reason), n in by_key.items() if split == "validation"} == val_ref
    assert {reason: n for (split, reason), n in by_key.items() if split == "train"} == train_ref


def test_local_source_never_downloads(run_taxiflow, tlc_dir, tmp_path, state_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(tlc_dir / "green_tripdata_2023-01.parquet", data_dir)
    # A server that does hold the missing month, passed as the download URL: with --source local it must not be asked.
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        result = run_taxiflow(
            "train", "--source", "local", "--tlc-base-url", base_url, "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(data_dir)
        )
    assert result.returncode == 1, result.stderr[-3000:]
    missing = data_dir / "green_tripdata_2023-02.parquet"
    assert f"green 2023-02: {missing} not found and no download source is configured" in result.stderr, result.stderr[-3000:]
    assert plan.hits == {}, "the server was asked for a file"
    assert not [p for p in (state_dir / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")], "nothing may be cached"
