"""`taxiflow stack` + `taxiflow deploy` + deployments run by the worker: real processes on 127.0.0.1.

The tests share one stack (module scope) and run in file order, like a user's session:
up -> deploy -> runs -> failures -> down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.support.servers import VENV_BIN, base_env, free_port

pytestmark = pytest.mark.servers
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Stack:
    def __init__(self, root: Path, data_dir: Path):
        self.root = root
        self.env = base_env(
            TAXIFLOW_STATE_DIR=str(root / "state"), TAXIFLOW_DATA_DIR=str(data_dir),
            TAXIFLOW_STACK_PREFECT_PORT=str(free_port()), TAXIFLOW_STACK_MLFLOW_PORT=str(free_port()), TAXIFLOW_STACK_S3_PORT=str(free_port()),
        )
        self.api = f"http://127.0.0.1:{self.env['TAXIFLOW_STACK_PREFECT_PORT']}/api"
        self.mlflow = f"http://127.0.0.1:{self.env['TAXIFLOW_STACK_MLFLOW_PORT']}"

    def run(self, *args: str, tool: str = "taxiflow", extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(self.env, **(extra_env or {}))
        return subprocess.run([str(VENV_BIN / tool), *args], cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)

    def state(self) -> dict:
        return json.loads((self.root / "state" / "stack" / "stack.json").read_text())

    def start_deployment(self, name: str, **params: str) -> str:
        args = ["deployment", "run", name]
        for k, v in params.items():
            args += ["-p", f"{k}={v}"]
        result = self.run(*args, tool="prefect", extra_env={"PREFECT_API_URL": self.api})
        assert result.returncode == 0, result.stdout + result.stderr
        return re.search(r"UUID: ([0-9a-f-]{36})", result.stdout).group(1)

    def flow_run(self, run_id: str) -> dict:
        return httpx.get(f"{self.api}/flow_runs/{run_id}", timeout=10).json()

    def wait(self, run_id: str, timeout_s: float = 240) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not finished after {timeout_s}s: {run['state']}")

    def logs(self, run_id: str) -> str:
        logs = httpx.post(f"{self.api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}, timeout=10).json()
        return "\n".join(entry["message"] for entry in logs)

    def model_versions(self) -> list[str]:
        return sorted(str(v.version) for v in MlflowClient(self.mlflow).search_model_versions("name='nyc-taxi-duration'"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    empty_data = root / "empty-data"  # the worker's data dir: runs must get months from a parameter or the bucket
    empty_data.mkdir()
    stack = Stack(root, empty_data)
    yield stack
    stack.run("stack", "down")


def _pids(state: dict) -> dict[str, int]:
    return {name: svc["pid"] for name, svc in state["services"].items()}


def test_up_is_healthy_and_idempotent(stack):
    up = stack.run("stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"Prefect UI:  {stack.api.removesuffix('/api')}" in up.stdout and f"MLflow UI:   {stack.mlflow}" in up.stdout
    first = _pids(stack.state())
    assert set(first) == {"s3", "mlflow", "prefect", "worker"}

    status = stack.run("stack", "status")
    assert status.returncode == 0, status.stdout
    for check in ("api", "work pool", "worker polls", "mlflow", "blocks", "bucket"):
        assert re.search(rf"^ok +{check}", status.stdout, re.M), status.stdout

    again = stack.run("stack", "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already up") == 4
    assert _pids(stack.state()) == first, "a second `up` starts no duplicates"
    env = stack.run("stack", "env").stdout
    assert f"export PREFECT_API_URL={stack.api}" in env and f"export MLFLOW_TRACKING_URI={stack.mlflow}" in env


def test_deploy_registers_the_three_deployments_with_a_schedule(stack):
    result = stack.run("deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    deployments = httpx.post(f"{stack.api}/deployments/filter", json={}, timeout=10).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) >= {"taxi-local-data", "taxi-s3-data", "taxi-monthly"}
    assert by_name["taxi-s3-data"]["parameters"] == {"source": "s3", "s3_block": "taxi-data"}
    schema = by_name["taxi-local-data"]["parameter_openapi_schema"]["properties"]
    assert schema["taxi"]["enum"] == ["green", "yellow", "fhv", "fhvhv"] or "green" in json.dumps(schema["taxi"])
    assert "pattern" in json.dumps(schema["train_month"]) and "maximum" in json.dumps(schema["max_depth"])
    assert [s["schedule"]["cron"] for s in by_name["taxi-monthly"]["schedules"]] == ["0 9 3 * *"]
    assert by_name["taxi-monthly"]["schedules"][0]["schedule"]["timezone"] == "America/New_York"


def test_schedule_creates_scheduled_runs(stack):
    monthly = next(d for d in httpx.post(f"{stack.api}/deployments/filter", json={}).json() if d["name"] == "taxi-monthly")
    deadline = time.monotonic() + 90
    runs = []
    while time.monotonic() < deadline and not runs:
        runs = httpx.post(f"{stack.api}/flow_runs/filter", json={"deployments": {"id": {"any_": [monthly["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}).json()
        time.sleep(2)
    assert runs, "the scheduler created no runs"
    for run in runs:
        start = run["expected_start_time"]
        assert re.match(r"\d{4}-\d{2}-03T1[34]:00:00", start), start  # 09:00 in New York, EST or EDT


def test_local_deployment_run_by_the_worker_registers_a_model_and_a_report(stack, tlc_dir):
    run_id = stack.start_deployment("train/taxi-local-data", train_month="2023-01", val_month="2023-02", model="linear", data_dir=str(tlc_dir))
    run = stack.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", stack.logs(run_id)[-3000:]
    assert run["parameters"]["model"] == "linear" and run["parameters"]["source"] == "local"
    assert stack.model_versions() == ["1"]
    version = MlflowClient(stack.mlflow).get_model_version("nyc-taxi-duration", "1")
    assert version.tags["train_month"] == "2023-01"
    artifacts = httpx.post(f"{stack.api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": ["duration-model-report"]}}}).json()
    assert len(artifacts) == 1 and "Validation RMSE" in artifacts[0]["data"]


def test_s3_deployment_with_data_only_in_the_bucket(stack, tlc_dir):
    env = {"PREFECT_API_URL": stack.api}
    upload = (
        "from prefect_aws import S3Bucket\n"
        "bucket = S3Bucket.load('taxi-data')\n"
        f"for m in ('2023-01', '2023-02'): bucket.upload_from_path('{tlc_dir}/green_tripdata_' + m + '.parquet', 'green_tripdata_' + m + '.parquet')\n"
    )
    result = stack.run("-c", upload, tool="python", extra_env=env)
    assert result.returncode == 0, result.stderr
    # The worker's data directory is empty: the local deployment fails, with the reason in its logs...
    failed = stack.wait(stack.start_deployment("train/taxi-local-data", train_month="2023-01", val_month="2023-02", model="linear"))
    assert failed["state"]["type"] == "FAILED"
    assert "green_tripdata_2023-01.parquet not found and no download source is configured" in stack.logs(failed["id"])
    # ...and the S3 deployment reads the bucket.
    done = stack.wait(stack.start_deployment("train/taxi-s3-data", train_month="2023-01", val_month="2023-02", model="linear"))
    assert done["state"]["type"] == "COMPLETED", stack.logs(done["id"])[-3000:]
    assert "s3://taxi-data/trip-data/green_tripdata_2023-01.parquet" in stack.logs(done["id"])
    assert stack.model_versions() == ["1", "2"]


def test_invalid_parameters_are_rejected_before_a_run_exists(stack):
    before = len(httpx.post(f"{stack.api}/flow_runs/filter", json={}).json())
    result = stack.run("deployment", "run", "train/taxi-local-data", "-p", "train_month=2023-13", tool="prefect", extra_env={"PREFECT_API_URL": stack.api})
    assert "Validation failed for field 'train_month'" in result.stdout + result.stderr
    bad_depth = stack.run("deployment", "run", "train/taxi-local-data", "-p", "max_depth=0", tool="prefect", extra_env={"PREFECT_API_URL": stack.api})
    assert "max_depth" in bad_depth.stdout + bad_depth.stderr and "Validation failed" in bad_depth.stdout + bad_depth.stderr
    assert len(httpx.post(f"{stack.api}/flow_runs/filter", json={}).json()) == before


def test_killing_the_worker_mid_run_crashes_the_run_and_registers_nothing(stack, tlc_dir):
    run_id = stack.start_deployment("train/taxi-local-data", train_month="2021-01", val_month="2021-02", data_dir=str(tlc_dir))
    deadline = time.monotonic() + 180
    fitting = []
    while time.monotonic() < deadline and not fitting:
        fitting = httpx.post(f"{stack.api}/task_runs/filter", json={
            "flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": "fit_model"}, "state": {"type": {"any_": ["RUNNING"]}}},
        }).json()
        time.sleep(0.5)
    assert fitting, stack.logs(run_id)[-2000:]
    os.killpg(stack.state()["services"]["worker"]["pid"], signal.SIGKILL)
    run = stack.wait(run_id, timeout_s=150)
    assert run["state"]["type"] == "CRASHED"
    time.sleep(2)
    assert stack.model_versions() == ["1", "2"], "no model version from a crashed run"
    # `up` restores just the worker.
    up = stack.run("stack", "up")
    assert up.returncode == 0 and "worker   started" in up.stdout and up.stdout.count("already up") == 3


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = Stack(tmp_path, tmp_path)
        other.env["TAXIFLOW_STACK_PREFECT_PORT"] = str(port)
        result = other.run("stack", "up")
    assert result.returncode == 1
    assert f"taxiflow: error: prefect: port {port} on 127.0.0.1 is already in use by another process; stop it or choose another port (TAXIFLOW_STACK_PREFECT_PORT)" in result.stderr
    assert not (tmp_path / "state" / "stack" / "stack.json").exists() or not json.loads((tmp_path / "state" / "stack" / "stack.json").read_text())["services"]


def test_down_stops_everything_and_twice_is_a_no_op(stack):
    pids = _pids(stack.state())
    down = stack.run("stack", "down")
    assert down.returncode == 0, down.stderr
    assert [line.split()[0] for line in down.stdout.splitlines()] == ["worker", "prefect", "mlflow", "s3"]
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], f"{name} ({pid}) still running"
    leftovers = subprocess.run(["pgrep", "-f", str(stack.root)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "no process of this stack may remain"
    again = stack.run("stack", "down")
    assert again.returncode == 0 and "Nothing to stop" in again.stdout
