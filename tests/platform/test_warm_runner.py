"""The warm runner (platform/warm_runner.py): reused, in each caller's own environment, listed, stopped,
interrupted with its caller, and never outliving its idle timeout.

Through the command, against the session's Prefect server (as with the stack up).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from taxiflow.platform.processes import ServiceProcess, is_running
from taxiflow.platform.warm_runner import runner_key, stop_warm_runners
from tests.conftest import registered_versions
from tests.support.servers import VENV_BIN, base_env, wait_for

TRAIN = ("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "2", "--retrain", "--json")
STARTING = "taxiflow: starting a warm runner"


class Runners:
    """A directory of warm runners, and `taxiflow` run with it as a user would."""

    def __init__(self, tmp_path: Path, tlc_dir: Path, prefect_api: str, idle_s: float) -> None:
        self.tmp_path = tmp_path
        self.directory = tmp_path / "runners"
        self.env = base_env(
            TAXIFLOW_WARM_RUNNER_DIR=str(self.directory),
            TAXIFLOW_WARM_RUNNER_IDLE_S=str(idle_s),
            TAXIFLOW_STATE_DIR=str(tmp_path / "state"),
            TAXIFLOW_DATA_DIR=str(tlc_dir),
            PREFECT_API_URL=prefect_api,
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "taxiflow"), *args], cwd=self.tmp_path, env={**self.env, **env}, capture_output=True, text=True, timeout=600)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(VENV_BIN / "taxiflow"), *args], cwd=self.tmp_path, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_runner(self) -> None:
        """What a first run does (ensure_warm_runner), in a process with the runs' environment."""
        code = "import os; from pathlib import Path; from taxiflow.platform.warm_runner import ensure_warm_runner, runner_key; "
        code += "ensure_warm_runner(Path(os.environ['TAXIFLOW_WARM_RUNNER_DIR']), runner_key(), float(os.environ['TAXIFLOW_WARM_RUNNER_IDLE_S']))"
        subprocess.run([str(VENV_BIN / "python"), "-c", code], env=self.env, check=True, timeout=60)

    def key(self) -> str:
        return runner_key(self.env)

    def service(self) -> ServiceProcess:
        return ServiceProcess(**json.loads((self.directory / f"{self.key()}.json").read_text()))

    def wait_ready(self) -> None:
        wait_for(lambda: (self.directory / f"{self.key()}.sock").exists(), timeout_s=180, what="the warm runner to listen")

    def log(self) -> str:
        return (self.directory / f"{self.key()}.log").read_text()

    def runs(self) -> list[int]:
        """The runner's children: the runs it is running now."""
        pid = self.service().pid
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.fixture
def runners(tmp_path, tlc_dir, prefect_api):
    r = Runners(tmp_path, tlc_dir, prefect_api, idle_s=600)
    yield r
    stop_warm_runners(r.directory)


def test_key_follows_code_and_load_time_variables_not_the_runs_settings():
    env = {"PATH": "/usr/bin"}
    key = runner_key(env)
    # What each run reads for itself does not need another runner ...
    assert runner_key({**env, "TAXIFLOW_STATE_DIR": "/elsewhere", "MLFLOW_TRACKING_URI": "http://x", "PREFECT_API_URL": "http://y/api"}) == key
    # ... what libraries read when they load does,
    assert runner_key({**env, "OMP_NUM_THREADS": "1"}) != key
    # and so does any change to taxiflow's code.
    source = Path(sys.modules["taxiflow.platform.warm_runner"].__file__)
    before = source.stat()
    try:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
        assert runner_key(env) != key
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert runner_key(env) == key


def test_later_runs_use_the_warm_runner_each_in_its_own_environment_listed_and_stopped(runners, prefect_api):
    first = runners.run(*TRAIN)
    assert first.returncode == 0, first.stderr[-3000:]
    assert STARTING in first.stderr, first.stderr[-2000:]
    runners.wait_ready()
    service = runners.service()

    # Another store, another experiment: the run takes its caller's environment, not the runner's starter's.
    other_state = runners.tmp_path / "other-state"
    second = runners.run(*TRAIN, "--experiment", "elsewhere", TAXIFLOW_STATE_DIR=str(other_state))
    assert second.returncode == 0, second.stderr[-3000:]
    assert STARTING not in second.stderr
    summary = json.loads(second.stdout)  # stdout is the JSON alone, as without a runner
    assert registered_versions(other_state) == [str(summary["model_version"])] == ["1"]
    assert "(train) exit 0" in runners.log() and is_running(service)
    assert runners.service().pid == service.pid  # the same runner, not a new one

    # It is a flow run like any other, in the Prefect server the caller named.
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(f"sqlite:///{other_state / 'mlflow.db'}").get_run(summary["run_id"]).data.tags
    flow_run = httpx.get(f"{prefect_api}/flow_runs/{tags['taxiflow.prefect_flow_run_id']}", timeout=10).json()
    assert flow_run["state_type"] == "COMPLETED" and flow_run["flow_id"]

    # A failing run fails the same way through the runner: its message, its exit code.
    bad = runners.run("train", "--taxi", "green", "--train-month", "2023-13", "--val-month", "2023-02")
    assert bad.returncode == 2 and "2023-13" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]

    status = runners.run("stack", "status")
    assert f"warm runner    pid {service.pid}, ready; 0 run(s) now; stops after 600 s without runs" in status.stdout, status.stdout
    down = runners.run("stack", "down")
    assert f"warm runner stopped (pid {service.pid})" in down.stdout, down.stdout
    assert not is_running(service)
    assert not list(runners.directory.glob("*.sock")) and not list(runners.directory.glob("*.json"))
    assert "warm runner" not in runners.run("stack", "status").stdout


def _start_long_run(runners: Runners) -> subprocess.Popen:
    """A run through the runner that fits for minutes; returned once its flow has begun."""
    process = runners.start("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "5000", "--retrain")
    assert process.stderr is not None
    for line in process.stderr:
        if "Beginning flow run" in line:
            return process
    raise AssertionError(f"the run ended before its flow began: exit {process.wait()}")


def test_ctrl_c_and_a_killed_caller_interrupt_the_run_not_the_runner(runners):
    runners.start_runner()
    runners.wait_ready()
    service = runners.service()

    process = _start_long_run(runners)
    wait_for(runners.runs, timeout_s=30, what="the run to be the runner's child")
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process: the caller, which passes it on
    assert process.wait(timeout=120) == 130
    assert wait_for(lambda: "exit 130" in runners.log(), timeout_s=30, what="the runner to report the interrupted run")
    assert not runners.runs() and is_running(service)

    process = _start_long_run(runners)
    (child,) = wait_for(runners.runs, timeout_s=30, what="the run to be the runner's child")
    process.kill()  # the caller dies without a word: its run must not go on alone
    process.wait()
    wait_for(lambda: not runners.runs(), timeout_s=120, what=f"the orphaned run (pid {child}) to be interrupted")
    # Interrupted as by Ctrl-C: 130, or 1 when the interrupt lands inside Prefect's start of the flow run, which reports it as a crash.
    (code,) = re.findall(rf"run pid {child} \(train\) exit (\d+) ", runners.log())
    assert int(code) in (1, 130), code  # not 0: it did not go on to fit the 5,000 rounds it was asked for
    assert is_running(service)


def test_an_idle_runner_stops_itself(tmp_path, tlc_dir, prefect_api):
    runners = Runners(tmp_path, tlc_dir, prefect_api, idle_s=3)
    try:
        runners.start_runner()
        runners.wait_ready()
        service = runners.service()
        refused = runners.run("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-01")
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "(train) exit 2" in runners.log()  # it ran in the runner, which then idles
        wait_for(lambda: not is_running(service), timeout_s=60, what="the idle runner to stop")
        assert "no run for 3 s: stopping" in runners.log()
        assert not list(runners.directory.glob("*.sock")) and not list(runners.directory.glob("*.json"))
    finally:
        stop_warm_runners(runners.directory)
