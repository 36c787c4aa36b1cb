"""Which Prefect server a `taxiflow` run reports to, and the local one kept warm between runs.

In order: `PREFECT_API_URL` when set (any server); the stack's server when `taxiflow stack up` runs
one; else a local server this module starts in the background on 127.0.0.1 and later runs reuse,
which saves Prefect's ~10 s temporary server per run and keeps every run in a Prefect UI. It is not
an orphan: `taxiflow stack status` lists it, `taxiflow stack down` stops it, and it stops itself
after `TAXIFLOW_LOCAL_PREFECT_IDLE_S` seconds without a run (`idle_server`). With that set to 0,
Prefect's temporary server runs inside each run instead, and nothing stays behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from taxiflow.io.file_lock import exclusive_file_lock
from taxiflow.platform.idle_server import LEASES_DIR, LOCK_FILE, STATE_FILE, live_leases
from taxiflow.platform.processes import ServiceProcess, is_healthy, is_running, launch_service, start_ticks, stop_service, wait_until_healthy
from taxiflow.settings import TaxiflowSettings

MARKER = "taxiflow.platform.idle_server"
HOST = "127.0.0.1"
# A new PREFECT_HOME is migrated on the server's first start: ~20 s here, more on a busy machine.
READY_TIMEOUT_S = 180


@dataclass
class LocalServer:
    service: ServiceProcess
    api_url: str
    idle_s: float
    started_now: bool
    process: Popen | None = None  # set when this process started it

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def wait_ready(self) -> None:
        wait_until_healthy(self.service, self.process, timeout_s=READY_TIMEOUT_S)


def server_dir(settings: TaxiflowSettings) -> Path:
    return (settings.state_dir / "local-prefect").resolve()


def _load(directory: Path) -> tuple[ServiceProcess, str, float] | None:
    try:
        data = json.loads((directory / STATE_FILE).read_text())
        return ServiceProcess(**data["service"]), data["api_url"], float(data["idle_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(directory: Path, server: LocalServer) -> None:
    tmp = directory / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"service": server.service.to_json(), "api_url": server.api_url, "idle_s": server.idle_s}, indent=2))
    os.replace(tmp, directory / STATE_FILE)


def _take_lease(directory: Path) -> None:
    """Mark this process as using the server until it exits (a killed process's lease is dropped by the server)."""
    leases = directory / LEASES_DIR
    leases.mkdir(parents=True, exist_ok=True)
    lease = leases / f"{os.getpid()}-{start_ticks(os.getpid())}"
    lease.touch()
    atexit.register(lease.unlink, missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _server_env(api_url: str) -> dict[str, str]:
    # The server runs for every later run: it must not inherit this run's pointers to other servers.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_LOGGING_CONFIG_PATH")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_UI_API_URL=api_url)
    return env


def lease_local_server(settings: TaxiflowSettings, idle_s: float) -> LocalServer:
    """A lease on the local server, started (not yet ready: `wait_ready`) if none runs."""
    directory = server_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(directory / LOCK_FILE):
        _take_lease(directory)
        recorded = _load(directory)
        if recorded is not None and is_running(recorded[0]):
            return LocalServer(recorded[0], recorded[1], recorded[2], started_now=False)
        port = _free_port()
        api_url = f"http://{HOST}:{port}/api"
        prefect = str(Path(sys.executable).parent / "prefect")
        serve = [prefect, "server", "start", "--host", HOST, "--port", str(port)]
        cmd = [sys.executable, "-m", MARKER, "--idle-s", str(idle_s), "--dir", str(directory), "--", *serve]
        service, process = launch_service(
            "local-prefect", cmd, env=_server_env(api_url), log=directory / "server.log", port=port, health_url=f"{api_url}/health", marker=MARKER
        )
        server = LocalServer(service, api_url, idle_s, started_now=True, process=process)
        _save(directory, server)
        return server


@dataclass(frozen=True)
class LocalServerStatus:
    api_url: str
    pid: int
    healthy: bool
    idle_s: float
    runs: int  # live leases
    log: str


def local_server_status(settings: TaxiflowSettings) -> LocalServerStatus | None:
    """The local server if one runs (None otherwise)."""
    directory = server_dir(settings)
    recorded = _load(directory)
    if recorded is None or not is_running(recorded[0]):
        return None
    service, api_url, idle_s = recorded
    return LocalServerStatus(api_url, service.pid, is_healthy(service, timeout_s=1.0), idle_s, len(live_leases(directory / LEASES_DIR)), service.log)


def stop_local_server(settings: TaxiflowSettings) -> int | None:
    """Stop the local server and what it started; its PID, or None if none ran."""
    directory = server_dir(settings)
    recorded = _load(directory)
    if recorded is None:
        return None
    stopped = stop_service(recorded[0])
    with contextlib.suppress(FileNotFoundError), exclusive_file_lock(directory / LOCK_FILE):
        (directory / STATE_FILE).unlink(missing_ok=True)
    return recorded[0].pid if stopped else None
