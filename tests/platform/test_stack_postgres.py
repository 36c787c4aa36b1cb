"""`taxiflow stack up --db postgres --artifacts s3`: the production-like layout.

Both servers keep their metadata in PostgreSQL and the MLflow server keeps model artifacts in the
stack's S3 bucket (moto), proxied: the training process needs no S3 credentials.
"""

from __future__ import annotations

import subprocess

import boto3
import pytest
from mlflow.tracking import MlflowClient

from tests.platform.test_stack import Stack
from tests.support.servers import free_port, still_running

pytestmark = pytest.mark.servers


def _psql(port: str, database: str, sql: str) -> str:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", database, "-tAc", sql], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_postgres_backs_prefect_and_mlflow_and_artifacts_land_in_the_bucket(tmp_path, tlc_dir):
    stack = Stack(tmp_path, tlc_dir)
    port = str(free_port())
    stack.env["TAXIFLOW_STACK_POSTGRES_PORT"] = port
    tree = set()
    try:
        up = stack.run("stack", "up", "--db", "postgres", "--artifacts", "s3", timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        assert set(stack.state()["services"]) == {"postgres", "s3", "mlflow", "prefect", "worker"}
        assert stack.run("stack", "status").returncode == 0

        trained = stack.run(
            "train",
            "--model",
            "linear",
            "--train-month",
            "2023-01",
            "--val-month",
            "2023-02",
            "--json",
            extra_env={"PREFECT_API_URL": stack.api, "MLFLOW_TRACKING_URI": stack.mlflow},
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert [v.version for v in MlflowClient(stack.mlflow).search_model_versions("name='nyc-taxi-duration'")] == ["1"]
        # The rows live in PostgreSQL, not in a SQLite file.
        assert _psql(port, "mlflow", "SELECT count(*) FROM model_versions") == "1"
        assert int(_psql(port, "prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")) >= 1
        assert not (tmp_path / "state" / "stack" / "mlflow.db").exists()
        # The model's files are objects in the bucket, not files on the server's disk.
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{stack.env['TAXIFLOW_STACK_S3_PORT']}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )  # moto's server accepts any key
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="taxi-data", Prefix="mlflow-artifacts/").get("Contents", [])]
        assert any(k.endswith("/MLmodel") for k in keys) and any(k.endswith("vocabulary.json") for k in keys), keys
        assert not (tmp_path / "state" / "stack" / "mlartifacts").exists()
        switch = stack.run("stack", "up", "--db", "sqlite")
        assert switch.returncode == 1 and "the stack is running with --db postgres" in switch.stderr
        tree = stack.processes()
        # PostgreSQL's backends and auxiliary processes each have a session of their own: only descent makes them the stack's.
        assert any("postgres: checkpointer" in p.cmdline for p in tree), sorted(p.cmdline[:80] for p in tree)
    finally:
        down = stack.run("stack", "down")
    assert down.returncode == 0 and "postgres stopped" in " ".join(down.stdout.split())
    assert subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", port, "-q"]).returncode != 0
    left = still_running(tree)
    assert not left, "still running after `down`:\n" + "\n".join(f"{p.pid} {p.cmdline[:150]}" for p in sorted(left, key=lambda p: p.pid))
