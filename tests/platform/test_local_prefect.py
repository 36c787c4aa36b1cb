"""The local Prefect server `taxiflow train` keeps warm between runs: reused, listed, stopped, never outliving its idle timeout.

Through the command, with no PREFECT_API_URL and no stack (what a user's `make train` does), each
test in its own PREFECT_HOME and state dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from taxiflow.platform.idle_server import live_leases
from taxiflow.platform.processes import start_ticks
from tests.conftest import stop_local_prefect
from tests.support.servers import VENV_BIN, base_env, process_tree, still_running, wait_for

# --retrain: each run trains (the same inputs would otherwise return the first run, cached).
TRAIN = ("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "2", "--retrain", "--json")
STARTING = "taxiflow: starting a local Prefect server"


class Machine:
    """A user's machine: a state dir and a PREFECT_HOME, no Prefect server configured."""

    def __init__(self, tmp_path: Path, tlc_dir: Path, idle_s: float) -> None:
        self.cwd = tmp_path
        self.state_dir = tmp_path / "state"
        self.env = base_env(
            TAXIFLOW_STATE_DIR=str(self.state_dir),
            TAXIFLOW_DATA_DIR=str(tlc_dir),
            PREFECT_HOME=str(tmp_path / "prefect-home"),
            TAXIFLOW_LOCAL_PREFECT_IDLE_S=str(idle_s),
        )

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(VENV_BIN / "taxiflow"), *args], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "taxiflow"), *args], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=600)

    @property
    def server_file(self) -> Path:
        return self.state_dir / "local-prefect" / "server.json"

    def server(self) -> dict:
        return json.loads(self.server_file.read_text())

    def server_tree(self) -> set:
        """The supervisor and what it started (the Prefect server and its children)."""
        service = self.server()["service"]
        return process_tree({service["pid"]}, {service["sid"]})


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


@pytest.fixture
def machine(tmp_path, tlc_dir):
    m = Machine(tmp_path, tlc_dir, idle_s=600)
    yield m
    stop_local_prefect(m.state_dir)


def test_runs_share_one_local_server_that_status_lists_and_down_stops(machine):
    # Two first runs at once: one server is started, under a lock; both runs report to it.
    started = [machine.start(*TRAIN), machine.start(*TRAIN)]
    first = [_finish(p) for p in started]
    assert [code for code, _, _ in first] == [0, 0], [err[-2000:] for _, _, err in first]
    assert sum(STARTING in err for _, _, err in first) == 1, [err[-2000:] for _, _, err in first]
    server = machine.server()
    api = server["api_url"]
    assert api.startswith("http://127.0.0.1:")

    # A later run reuses it: same process, nothing started.
    code, out, err = _finish(machine.start(*TRAIN))
    assert code == 0, err[-2000:]
    assert STARTING not in err
    assert machine.server()["service"]["pid"] == server["service"]["pid"]

    # Every run is on that server, completed, with its logs (the last line included: nothing lost at exit).
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {}}, "sort": "START_TIME_ASC"}, timeout=10).json()
    assert [(r["state"]["type"], r["parameters"]["train_month"]) for r in runs] == [("COMPLETED", "2023-01")] * 3
    last = runs[-1]["id"]
    logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [last]}}, "sort": "TIMESTAMP_DESC", "limit": 1}, timeout=10).json()
    assert logs[0]["message"] == "Finished in state Completed()"
    assert json.loads(out.strip().splitlines()[-1])["model_version"] == "3"

    status = machine.run("stack", "status")
    line = next(line for line in status.stdout.splitlines() if "local prefect" in line)
    assert line.startswith("ok ") and api.removesuffix("/api") in line and f"pid {server['service']['pid']}" in line, status.stdout

    tree = machine.server_tree()
    assert {p.pid for p in tree} >= {server["service"]["pid"]} and any("prefect server start" in p.cmdline for p in tree), tree
    down = machine.run("stack", "down")
    assert down.returncode == 0 and f"local Prefect server stopped (pid {server['service']['pid']})" in down.stdout, down.stdout + down.stderr
    assert still_running(tree) == set()
    assert not machine.server_file.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/health", timeout=3)
    status = machine.run("stack", "status")
    assert "local prefect" not in status.stdout


def test_idle_timeout_stops_the_server_but_never_during_a_run(tmp_path, tlc_dir):
    # Idle after 2 s, while a run takes longer than that: its lease keeps the server up until it ends.
    m = Machine(tmp_path, tlc_dir, idle_s=2)
    try:
        code, _, err = _finish(m.start(*TRAIN))
        assert code == 0, err[-3000:]
        assert STARTING in err
        tree = m.server_tree()
        api = m.server()["api_url"]
        wait_for(lambda: not still_running(tree), timeout_s=60, what="the idle local server to stop itself")
        assert not m.server_file.exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api}/health", timeout=3)
        assert "no run used this server for 2 s: stopping it" in (tmp_path / "state" / "local-prefect" / "server.log").read_text()
        # The next run starts a new one.
        code, _, err = _finish(m.start(*TRAIN))
        assert code == 0 and STARTING in err, err[-3000:]
    finally:
        stop_local_prefect(m.state_dir)


def test_a_killed_runs_lease_does_not_keep_the_server_alive(tmp_path):
    leases = tmp_path / "leases"
    leases.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_ticks = start_ticks(dead.pid)
    dead.wait()
    mine = f"{os.getpid()}-{start_ticks(os.getpid())}"
    (leases / f"{dead.pid}-{dead_ticks}").touch()  # a run killed before it could remove its lease
    (leases / f"{os.getpid()}-{start_ticks(os.getpid())}").touch()
    (leases / f"{os.getpid()}-1").touch()  # this PID, but another process's start time: a recycled PID
    (leases / "notes.tmp").touch()
    assert live_leases(leases) == [mine]
    assert sorted(p.name for p in leases.iterdir()) == sorted([mine, "notes.tmp"])
