"""Starting, checking and stopping the platform's background processes, by PID, with health checks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from taxiflow.core.errors import TaxiflowError


class PlatformError(TaxiflowError):
    """The platform could not be brought up, checked or down as asked."""


@dataclass(frozen=True)
class ServiceProcess:
    """A process the stack started: enough to find it, check it and stop exactly it."""

    name: str
    pid: int
    port: int | None
    health_url: str | None
    log: str
    started_at: float
    marker: str  # a substring of its command line: a recycled PID is never mistaken for ours

    def to_json(self) -> dict:
        return asdict(self)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def is_running(service: ServiceProcess) -> bool:
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{service.pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and service.marker in cmdline


def is_healthy(service: ServiceProcess, timeout_s: float = 2.0) -> bool:
    if not is_running(service):
        return False
    if service.health_url is None:
        return True
    try:
        return httpx.get(service.health_url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_service(name: str, cmd: list[str], *, env: dict[str, str], log: Path, port: int | None, health_url: str | None, marker: str, timeout_s: float = 90) -> ServiceProcess:
    """Start `cmd` detached (own session, output to `log`) and wait until it is healthy."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    service = ServiceProcess(name, process.pid, port, health_url, str(log), time.time(), marker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PlatformError(f"{name} exited with code {process.returncode} while starting; see {log}:\n{_tail(log)}")
        if is_healthy(service):
            return service
        time.sleep(0.3)
    stop_service(service)
    raise PlatformError(f"{name} was not healthy after {timeout_s:.0f}s; see {log}:\n{_tail(log)}")


def stop_service(service: ServiceProcess, *, timeout_s: float = 20) -> bool:
    """SIGINT the service's process group (a worker then lets its runs crash cleanly), then SIGKILL."""
    if not is_running(service):
        return False
    for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(service.pid, os.WNOHANG)  # reap it if we are its parent
            if not is_running(service):
                return True
            time.sleep(0.2)
    return not is_running(service)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
