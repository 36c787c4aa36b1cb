"""`taxiflow stack` + `taxiflow deploy` + deployments run by the worker: real processes on 127.0.0.1.

The tests share one stack (module scope: starting it costs a minute), but none relies on another
having run first: the `running_stack` and `deployed_stack` fixtures bring it up (and deploy) when it
isn't, and what the stack has accumulated (model versions, flow runs) is compared before and after.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.support.servers import VENV_BIN, Proc, all_processes, base_env, free_port, process_tree, processes_with_env, read_proc, still_running, wait_for

pytestmark = pytest.mark.servers
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SERVICES = {"s3", "mlflow", "prefect", "worker"}
DEPLOYMENTS = {"taxi-local-data", "taxi-s3-data", "taxi-monthly", "taxi-score", "taxi-backfill", "taxi-tune"}
MODEL = "nyc-taxi-duration"


class Stack:
    def __init__(self, root: Path, data_dir: Path):
        self.root = root
        self.env = base_env(
            TAXIFLOW_STATE_DIR=str(root / "state"),
            TAXIFLOW_DATA_DIR=str(data_dir),
            TAXIFLOW_STACK_PREFECT_PORT=str(free_port()),
            TAXIFLOW_STACK_MLFLOW_PORT=str(free_port()),
            TAXIFLOW_STACK_S3_PORT=str(free_port()),
            TAXIFLOW_STACK_SERVE_PORT=str(free_port()),
        )
        self.api = f"http://127.0.0.1:{self.env['TAXIFLOW_STACK_PREFECT_PORT']}/api"
        self.mlflow = f"http://127.0.0.1:{self.env['TAXIFLOW_STACK_MLFLOW_PORT']}"

    def run(self, *args: str, tool: str = "taxiflow", extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(self.env, **(extra_env or {}))
        return subprocess.run([str(VENV_BIN / tool), *args], cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)

    def state(self) -> dict:
        return json.loads((self.root / "state" / "stack" / "stack.json").read_text())

    def services_running(self) -> bool:
        """Every service recorded in the state is still the process that was started (same PID and start time)."""
        path = self.root / "state" / "stack" / "stack.json"
        services = json.loads(path.read_text())["services"] if path.exists() else {}
        return set(services) >= SERVICES and all(
            (proc := read_proc(svc["pid"])) is not None and proc.start == svc["start_ticks"] and proc.state != "Z" for svc in services.values()
        )

    def processes(self) -> set[Proc]:
        """Every live process of the stack: in a recorded session or process group, or a descendant of a recorded PID."""
        services = self.state()["services"].values()
        return process_tree({svc["pid"] for svc in services}, {svc[key] for svc in services for key in ("sid", "pgid")})

    def deployment_ids(self) -> dict[str, str]:
        return {d["name"]: d["id"] for d in httpx.post(f"{self.api}/deployments/filter", json={}, timeout=10).json()}

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
        return wait_for(
            lambda: (run := self.flow_run(run_id))["state"]["type"] in TERMINAL and run, timeout_s=timeout_s, interval_s=1, what=f"flow run {run_id} to finish"
        )

    def wait_for_task(self, run_id: str, task: str, timeout_s: float = 180) -> None:
        """Until the run's `task` is running: the flow-run process is then deep in its work."""
        query = {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": task}, "state": {"type": {"any_": ["RUNNING"]}}}}
        try:
            wait_for(lambda: httpx.post(f"{self.api}/task_runs/filter", json=query, timeout=10).json(), timeout_s=timeout_s, what=f"{task} to run")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the run: {self.flow_run(run_id)['state']}\n{self.logs(run_id)[-2000:]}") from None

    def run_processes(self, run_id: str) -> set[Proc]:
        """The flow run's process (the worker starts it with PREFECT__FLOW_RUN_ID in its environment) and its descendants."""
        own = processes_with_env("PREFECT__FLOW_RUN_ID", run_id)
        return process_tree({p.pid for p in own}, set())

    def logs(self, run_id: str) -> str:
        logs = httpx.post(f"{self.api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}, timeout=10).json()
        return "\n".join(entry["message"] for entry in logs)

    def model_versions(self) -> dict[int, str]:
        """Registered versions of the model -> the Prefect flow run that trained each (from its MLflow run's tag)."""
        client = MlflowClient(self.mlflow)
        return {
            int(v.version): client.get_run(v.run_id).data.tags.get("taxiflow.prefect_flow_run_id", "") for v in client.search_model_versions(f"name='{MODEL}'")
        }

    def new_versions(self, before: dict[int, str]) -> dict[int, str]:
        return {v: run for v, run in self.model_versions().items() if v not in before}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The module's stack, not yet started."""
    root = tmp_path_factory.mktemp("stack")
    empty_data = root / "empty-data"  # the worker's data dir: runs must get months from a parameter or the bucket
    empty_data.mkdir()
    stack = Stack(root, empty_data)
    yield stack
    stack.run("stack", "down")


@pytest.fixture
def running_stack(stack) -> Stack:
    """The stack, brought up if it isn't (an earlier test may have stopped it or killed its worker)."""
    if not stack.services_running():
        up = stack.run("stack", "up")
        assert up.returncode == 0, up.stdout + up.stderr
    return stack


@pytest.fixture
def deployed_stack(running_stack) -> Stack:
    """The running stack with the deployments registered."""
    if not DEPLOYMENTS <= set(running_stack.deployment_ids()):
        deploy = running_stack.run("deploy")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    return running_stack


def _pids(state: dict) -> dict[str, int]:
    return {name: svc["pid"] for name, svc in state["services"].items()}


def test_up_is_healthy_and_idempotent(stack):
    up = stack.run("stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"Prefect UI:  {stack.api.removesuffix('/api')}" in up.stdout and f"MLflow UI:   {stack.mlflow}" in up.stdout
    first = _pids(stack.state())
    assert set(first) == SERVICES
    for svc in stack.state()["services"].values():  # recorded: the ids `down` and the tests find its processes by
        proc = read_proc(svc["pid"])
        assert (svc["sid"], svc["pgid"], svc["start_ticks"]) == (proc.sid, proc.pgid, proc.start) == (svc["pid"], svc["pid"], proc.start), svc

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


def test_deploy_registers_the_deployments_with_a_schedule(running_stack):
    stack = running_stack
    result = stack.run("deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    deployments = httpx.post(f"{stack.api}/deployments/filter", json={}, timeout=10).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) >= DEPLOYMENTS
    assert by_name["taxi-s3-data"]["parameters"] == {"source": "s3", "s3_block": "taxi-data"}
    schema = by_name["taxi-local-data"]["parameter_openapi_schema"]["properties"]
    assert schema["taxi"]["enum"] == ["green", "yellow", "fhv", "fhvhv"] or "green" in json.dumps(schema["taxi"])
    assert "pattern" in json.dumps(schema["train_month"]) and "maximum" in json.dumps(schema["max_depth"])
    assert [s["schedule"]["cron"] for s in by_name["taxi-monthly"]["schedules"]] == ["0 9 3 * *"]
    assert by_name["taxi-monthly"]["schedules"][0]["schedule"]["timezone"] == "America/New_York"
    score_form = by_name["taxi-score"]["parameter_openapi_schema"]
    assert "month" in score_form["required"] and "pattern" in json.dumps(score_form["properties"]["month"])
    backfill_form = by_name["taxi-backfill"]["parameter_openapi_schema"]
    assert {"from_month", "to_month"} <= set(backfill_form["required"]) and "maximum" in json.dumps(backfill_form["properties"]["max_concurrency"])
    assert by_name["taxi-backfill"]["parameters"] == {"source": "auto", "mode": "missing", "max_concurrency": 2}
    tune_form = by_name["taxi-tune"]["parameter_openapi_schema"]["properties"]
    assert "maximum" in json.dumps(tune_form["trials"]) and "space_file" in tune_form and "params" not in tune_form
    assert by_name["taxi-tune"]["parameters"] == {"trials": 50, "max_concurrency": 2}


def test_schedule_creates_scheduled_runs(deployed_stack):
    stack = deployed_stack
    query = {"deployments": {"id": {"any_": [stack.deployment_ids()["taxi-monthly"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    runs = wait_for(
        lambda: httpx.post(f"{stack.api}/flow_runs/filter", json=query, timeout=10).json(),
        timeout_s=90,
        interval_s=2,
        what="the scheduler to create runs of taxi-monthly",
    )
    for run in runs:
        start = run["expected_start_time"]
        assert re.match(r"\d{4}-\d{2}-03T1[34]:00:00", start), start  # 09:00 in New York, EST or EDT


def test_local_deployment_run_by_the_worker_registers_a_model_and_a_report(deployed_stack, tlc_dir):
    stack = deployed_stack
    before = stack.model_versions()
    run_id = stack.start_deployment("train/taxi-local-data", train_month="2023-01", val_month="2023-02", model="linear", data_dir=str(tlc_dir))
    run = stack.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", stack.logs(run_id)[-3000:]
    assert run["parameters"]["model"] == "linear" and run["parameters"]["source"] == "local"
    new = stack.new_versions(before)
    assert list(new.values()) == [run_id], f"exactly one new version, trained by this run: {new}"
    version = MlflowClient(stack.mlflow).get_model_version(MODEL, str(next(iter(new))))
    assert version.tags["train_month"] == "2023-01"
    artifacts = httpx.post(
        f"{stack.api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": ["duration-model-report"]}}}
    ).json()
    assert len(artifacts) == 1 and "Validation RMSE" in artifacts[0]["data"]


def test_s3_deployment_with_data_only_in_the_bucket(deployed_stack, tlc_dir):
    stack = deployed_stack
    before = stack.model_versions()
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
    # retrain: an earlier test trained this pair on the same rows; this run must read and train anyway.
    done = stack.wait(stack.start_deployment("train/taxi-s3-data", train_month="2023-01", val_month="2023-02", model="linear", retrain="true"))
    assert done["state"]["type"] == "COMPLETED", stack.logs(done["id"])[-3000:]
    assert "s3://taxi-data/trip-data/green_tripdata_2023-01.parquet" in stack.logs(done["id"])
    assert list(stack.new_versions(before).values()) == [done["id"]], "one new version, from the S3 run; none from the failed one"


def test_invalid_parameters_are_rejected_before_a_run_exists(deployed_stack):
    stack = deployed_stack
    # Runs of this deployment only: the scheduler may add taxi-monthly runs meanwhile.
    of_local = {"deployments": {"id": {"any_": [stack.deployment_ids()["taxi-local-data"]]}}}
    before = len(httpx.post(f"{stack.api}/flow_runs/filter", json=of_local, timeout=10).json())
    result = stack.run("deployment", "run", "train/taxi-local-data", "-p", "train_month=2023-13", tool="prefect", extra_env={"PREFECT_API_URL": stack.api})
    assert "Validation failed for field 'train_month'" in result.stdout + result.stderr
    bad_depth = stack.run("deployment", "run", "train/taxi-local-data", "-p", "max_depth=0", tool="prefect", extra_env={"PREFECT_API_URL": stack.api})
    assert "max_depth" in bad_depth.stdout + bad_depth.stderr and "Validation failed" in bad_depth.stdout + bad_depth.stderr
    assert len(httpx.post(f"{stack.api}/flow_runs/filter", json=of_local, timeout=10).json()) == before


def test_killing_the_worker_mid_run_crashes_the_run_and_registers_nothing(deployed_stack, tlc_dir):
    stack = deployed_stack
    before = stack.model_versions()
    run_id = stack.start_deployment("train/taxi-local-data", train_month="2021-01", val_month="2021-02", data_dir=str(tlc_dir))
    stack.wait_for_task(run_id, "fit_model")
    flow_run = stack.run_processes(run_id)
    assert flow_run, "the worker runs the flow in a process of its own"
    os.killpg(stack.state()["services"]["worker"]["pid"], signal.SIGKILL)
    run = stack.wait(run_id, timeout_s=150)
    assert run["state"]["type"] == "CRASHED"
    # The run's process dies with its worker: a survivor could still register a model after this test.
    wait_for(lambda: not still_running(flow_run), timeout_s=60, what="the flow run's processes to exit")
    assert stack.model_versions() == before, "no model version from a crashed run"
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
    assert (
        f"taxiflow: error: prefect: port {port} on 127.0.0.1 is already in use by another process; stop it or choose another port (TAXIFLOW_STACK_PREFECT_PORT)"
        in result.stderr
    )
    assert not (tmp_path / "state" / "stack" / "stack.json").exists() or not json.loads((tmp_path / "state" / "stack" / "stack.json").read_text())["services"]


def _champion(stack: Stack) -> str | None:
    try:
        return MlflowClient(stack.mlflow).get_model_version_by_alias(MODEL, "champion").version
    except MlflowException:
        return None


def test_up_serve_starts_the_prediction_service_on_the_champion(deployed_stack, tlc_dir):
    stack = deployed_stack
    if _champion(stack) is None:  # the stack's first model becomes champion
        run_id = stack.start_deployment("train/taxi-local-data", train_month="2023-01", val_month="2023-02", model="linear", data_dir=str(tlc_dir))
        assert stack.wait(run_id)["state"]["type"] == "COMPLETED", stack.logs(run_id)[-3000:]
    champion = _champion(stack)
    up = stack.run("stack", "up", "--serve")
    assert up.returncode == 0, up.stdout + up.stderr
    serve_url = f"http://127.0.0.1:{stack.env['TAXIFLOW_STACK_SERVE_PORT']}"
    assert "serve    started" in up.stdout and f"Predictions: {serve_url}/predict" in up.stdout
    wait_for(lambda: httpx.get(f"{serve_url}/ready", timeout=5).status_code == 200, timeout_s=60, what="the service to load the champion")
    answer = httpx.post(f"{serve_url}/predict", json={"PULocationID": 74, "DOLocationID": 75, "trip_distance": 2.5}, timeout=10).json()
    assert answer["model_version"] == champion and answer["prediction"] > 0
    status = stack.run("stack", "status")
    assert status.returncode == 0, status.stdout
    assert re.search(r"^ok +serve ", status.stdout, re.M), status.stdout
    assert re.search(rf"^ok +served model +{serve_url}: {MODEL} v{champion} ", status.stdout, re.M), status.stdout
    # Idempotent, and a later `up` without --serve keeps it (it is part of the stack now).
    again = stack.run("stack", "up")
    assert again.returncode == 0 and "serve    already up" in again.stdout


def test_down_mid_run_leaves_no_process_of_the_stack_and_twice_is_a_no_op(deployed_stack, tlc_dir):
    stack = deployed_stack
    run_id = stack.start_deployment("train/taxi-local-data", train_month="2021-01", val_month="2021-02", data_dir=str(tlc_dir))
    stack.wait_for_task(run_id, "fit_model")
    tree = stack.processes()
    started = set(_pids(stack.state()))
    flow_run = stack.run_processes(run_id)
    assert flow_run and {(p.pid, p.start) for p in flow_run} <= {(p.pid, p.start) for p in tree}, "the run's processes count as the stack's"
    assert {p.pid for p in tree} >= set(_pids(stack.state()).values())
    down = stack.run("stack", "down")
    assert down.returncode == 0, down.stderr
    assert [line.split()[0] for line in down.stdout.splitlines()] == [n for n in ("serve", "worker", "prefect", "mlflow", "s3") if n in started]
    # Every process of the tree, not just the PIDs `up` started: servers' children and the flow run too.
    left = still_running(tree)
    assert not left, "still running after `down`:\n" + "\n".join(f"{p.pid} {p.cmdline[:150]}" for p in sorted(left, key=lambda p: p.pid))
    # And nothing working in the stack's directory, whoever started it.
    strays = [p for p in all_processes().values() if str(stack.root) in p.cmdline and p.state != "Z"]
    assert not strays, strays
    again = stack.run("stack", "down")
    assert again.returncode == 0 and "Nothing to stop" in again.stdout
