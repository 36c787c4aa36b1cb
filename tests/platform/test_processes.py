"""`stop_service` stops a service's whole process tree, and nothing that isn't its: real processes, no servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taxiflow.platform.processes import ServiceProcess, is_running, process_tree, start_service, stop_service
from tests.support.servers import read_proc, still_running, wait_for

# A service that starts a helper in a session of its own (as a worker starts flow runs, or PostgreSQL its
# backends), writes the helper's PID to argv[1], then idles until signalled.
SERVICE = (
    "import subprocess, sys, time\n"
    "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'], start_new_session=True)\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(helper.pid))\n"
    "import os; os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"  # whole, or not at all
    "time.sleep(3600)\n"
)


def _start(tmp_path: Path) -> tuple[ServiceProcess, int]:
    pid_file = tmp_path / "helper.pid"
    service = start_service(
        "demo",
        [sys.executable, "-c", SERVICE, str(pid_file)],
        env=dict(os.environ),
        log=tmp_path / "demo.log",
        port=None,
        health_url=None,
        marker=str(pid_file),
    )
    helper = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout_s=30, what="the service to start its helper"))
    return service, helper


@pytest.fixture
def cleanup():
    """SIGKILL, after the test, whatever it registered and is still running: a failing test leaks nothing."""
    procs = []
    yield procs.append
    for proc in still_running(set(procs)):
        os.kill(proc.pid, signal.SIGKILL)


def test_stop_service_stops_a_helper_in_its_own_session(tmp_path, cleanup):
    service, helper_pid = _start(tmp_path)
    leader, helper = read_proc(service.pid), read_proc(helper_pid)
    cleanup(leader)
    cleanup(helper)
    assert helper.sid == helper_pid != service.sid, "the helper is outside the service's session: only descent makes it the service's"
    assert set(process_tree(service)) == {service.pid, helper_pid}
    # The group's SIGINT ends the service but never reaches the helper: it needs the per-process SIGTERM.
    assert stop_service(service, timeout_s=1) is True
    assert still_running({leader, helper}) == set()


def test_stop_service_finds_the_orphans_of_a_service_that_died(tmp_path, cleanup):
    service, helper_pid = _start(tmp_path)
    leader, helper = read_proc(service.pid), read_proc(helper_pid)
    cleanup(leader)
    cleanup(helper)
    os.kill(service.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(service.pid, 0)  # we started it: reap it, or it lingers as a zombie
    # Orphaned: no parent links it to the service, no session either; the inherited token still does.
    wait_for(lambda: read_proc(helper_pid).ppid != service.pid, timeout_s=10, what="the helper to be reparented")
    assert not is_running(service)
    assert set(process_tree(service)) == {helper_pid}
    assert stop_service(service, timeout_s=1) is True
    assert still_running({helper}) == set()


def test_a_recycled_pid_or_a_stranger_is_never_stopped(tmp_path, cleanup):
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        proc = read_proc(stranger.pid)
        cleanup(proc)
        # As if our service had had this PID (and session) before: only its start time tells them apart.
        recycled = ServiceProcess(
            "demo",
            stranger.pid,
            None,
            None,
            str(tmp_path / "demo.log"),
            time.time(),
            marker="sleep",
            pgid=stranger.pid,
            sid=stranger.pid,
            start_ticks=proc.start - 1,
            token="not-its-token",
        )
        assert not is_running(recycled)
        assert process_tree(recycled) == {}
        assert stop_service(recycled, timeout_s=1) is False
        assert still_running({proc}) == {read_proc(stranger.pid)}, "the stranger was left alone"
    finally:
        stranger.kill()
        stranger.wait()
