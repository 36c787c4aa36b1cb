"""Starting, checking and stopping the platform's background processes, by PID, with health checks.

Each service starts in its own session. What it spawns stays in that session unless it starts a
session of its own (a worker's flow runs, PostgreSQL's backends) - but those are still its
descendants. So a service's process tree is: its session and process group, plus every descendant
of those. Stopping a service waits for that whole tree, not just for the PID we started.
Everything a service starts inherits a random token in its environment, so what it leaves behind
when it dies (orphans, in its session or in their own) is still recognised as its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from taxiflow.core.errors import TaxiflowError

TOKEN_VAR = "TAXIFLOW_SERVICE_TOKEN"


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
    # Defaults: a state file written before these were recorded still loads (then only `pid` is known).
    pgid: int = 0
    sid: int = 0
    start_ticks: int = 0  # /proc/<pid>/stat field 22: with `pid`, names this process even after PID reuse
    token: str = ""  # in the environment of everything it starts: tells its orphans from strangers

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


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    pgid: int
    sid: int
    start_ticks: int


def _stat(pid: int) -> _Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and parentheses
    return _Stat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), None if there is no such live process: with the PID, its identity."""
    st = _stat(pid)
    return st.start_ticks if st is not None and st.state != "Z" else None


def _alive(pid: int, start_ticks: int) -> bool:
    """`pid` is still the process that started at `start_ticks`, and not a zombie (which runs nothing)."""
    st = _stat(pid)
    return st is not None and st.start_ticks == start_ticks and st.state != "Z"


def _has_token(pid: int, token: str) -> bool:
    try:
        return f"{TOKEN_VAR}={token}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _all_stats() -> dict[int, _Stat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st.state != "Z":
            stats[int(entry)] = st
    return stats


def is_running(service: ServiceProcess) -> bool:
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    st = _stat(service.pid)
    if st is None or st.state == "Z" or (service.start_ticks and st.start_ticks != service.start_ticks):
        return False
    return service.marker in cmdline


def process_tree(service: ServiceProcess, known: dict[int, int] | None = None) -> dict[int, int]:
    """The service's live processes, as {pid: start ticks}: its session and group, their descendants,
    and the still-live descendants of `known` (processes seen earlier, e.g. before their parent died)."""
    stats = _all_stats()
    tree: dict[int, int] = {}
    if service.pid in stats and is_running(service):
        # While its leader lives, the session and group are ours: an id in use is never handed out again.
        ids = {service.pid, service.sid, service.pgid} - {0}
        tree.update({pid: st.start_ticks for pid, st in stats.items() if st.sid in ids or st.pgid in ids})
        tree[service.pid] = stats[service.pid].start_ticks
    elif service.token:
        # Leader gone: its ids may since have been reused, and its orphans may be in sessions of their
        # own (a crashed worker's flow runs): what carries its token is its own, and nothing else.
        tree.update({pid: st.start_ticks for pid, st in stats.items() if _has_token(pid, service.token)})
    tree.update({pid: ticks for pid, ticks in (known or {}).items() if pid in stats and stats[pid].start_ticks == ticks})
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st.ppid, []).append(pid)
    todo = list(tree)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree[child] = stats[child].start_ticks
                todo.append(child)
    return {pid: ticks for pid, ticks in tree.items() if pid != os.getpid()}


def is_healthy(service: ServiceProcess, timeout_s: float = 2.0) -> bool:
    if not is_running(service):
        return False
    if service.health_url is None:
        return True
    try:
        return httpx.get(service.health_url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_service(
    name: str, cmd: list[str], *, env: dict[str, str], log: Path, port: int | None, health_url: str | None, marker: str, timeout_s: float = 90
) -> ServiceProcess:
    """Start `cmd` detached (own session, output to `log`) and wait until it is healthy."""
    service, process = launch_service(name, cmd, env=env, log=log, port=port, health_url=health_url, marker=marker)
    wait_until_healthy(service, process, timeout_s=timeout_s)
    return service


def launch_service(
    name: str, cmd: list[str], *, env: dict[str, str], log: Path, port: int | None, health_url: str | None, marker: str
) -> tuple[ServiceProcess, subprocess.Popen]:
    """Start `cmd` detached (own session, output to `log`) without waiting: the caller waits when it needs it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**env, TOKEN_VAR: token}, start_new_session=True)
    st = _stat(process.pid)
    if st is None:  # never: it cannot be reaped before we wait for it, so /proc still lists it
        raise PlatformError(f"{name} (pid {process.pid}) has no /proc entry right after starting")
    service = ServiceProcess(
        name, process.pid, port, health_url, str(log), time.time(), marker, pgid=st.pgid, sid=st.sid, start_ticks=st.start_ticks, token=token
    )
    return service, process


def wait_until_healthy(service: ServiceProcess, process: subprocess.Popen | None = None, *, timeout_s: float = 90) -> None:
    """Wait for the health check; a service that exits or stays unhealthy is stopped and reported with its log."""
    log = Path(service.log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PlatformError(f"{service.name} exited with code {process.returncode} while starting; see {log}:\n{_tail(log)}")
        if process is None and not is_running(service):
            raise PlatformError(f"{service.name} (pid {service.pid}) exited while starting; see {log}:\n{_tail(log)}")
        if is_healthy(service):
            return
        time.sleep(0.2)
    stop_service(service)
    raise PlatformError(f"{service.name} was not healthy after {timeout_s:.0f}s; see {log}:\n{_tail(log)}")


def stop_service(service: ServiceProcess, *, timeout_s: float = 20) -> bool:
    """Stop the service's whole process tree; True if any of it was running.

    First SIGINT to its process group only: a worker then lets its runs crash cleanly, and servers
    stop their own children (PostgreSQL its backends). Whatever of the tree outlives that - a flow
    run, an orphaned child - gets SIGTERM, then SIGKILL, each process by itself.
    """
    tree = process_tree(service)
    if not tree:
        return False
    # The group is certainly ours only while its leader lives; without it, signal known processes one by one.
    phases = ((signal.SIGINT, timeout_s),) if is_running(service) else ()
    for sig, wait in (*phases, (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if sig == signal.SIGINT:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.pgid or service.pid, sig)
        else:
            for pid, ticks in tree.items():
                if _alive(pid, ticks):  # never signal a recycled PID
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(service.pid, os.WNOHANG)  # reap it if we are its parent
            # Keep following the tree: children started meanwhile, or orphaned when their parent exits.
            tree = process_tree(service, known=tree)
            if not tree:
                return True
            time.sleep(0.2)
    return not process_tree(service, known=tree)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
