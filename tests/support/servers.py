"""Real local servers for tests, all bound to 127.0.0.1 on free ports."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout_s}s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_process(cmd: list[str], health_url: str, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(health_url, process, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 2)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TAXIFLOW_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    # No warm runner (platform/warm_runner.py) unless a test asks for one: each test's command runs as itself.
    env.update(TAXIFLOW_WARM_RUNNER_IDLE_S="0")
    env.update(extra)
    return env


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    port = free_port()
    env = base_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running_process(cmd, f"http://127.0.0.1:{port}/api/health", home / "prefect-server.log", env):
        yield f"http://127.0.0.1:{port}/api"


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow-server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    with running_process(cmd, f"http://127.0.0.1:{port}/health", root / "mlflow-server.log", env):
        yield f"http://127.0.0.1:{port}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def file_server(directory: Path, handler: type[http.server.SimpleHTTPRequestHandler] = _QuietHandler) -> Iterator[str]:
    """Serve `directory` over HTTP (the TLC's CDN, locally)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    server.daemon_threads = True
    server.block_on_close = False  # stalled handlers must not hold up a test's teardown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/trip-data/"
    finally:
        server.shutdown()
        server.server_close()


def stage_tlc_tree(source: Path, root: Path) -> Path:
    """A directory laid out like the TLC's site (`trip-data/<file>`), holding symlinks to `source`'s files."""
    trip_data = root / "trip-data"
    trip_data.mkdir(parents=True, exist_ok=True)
    for f in source.glob("*.parquet"):
        target = trip_data / f.name
        if not target.exists():
            target.symlink_to(f.resolve())
    return root


def copy_month(source: Path, name: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source / name, directory / name))


class FaultPlan:
    """Per file name, the faults to serve on successive requests before serving it properly.

    Faults: "500"/"503" (server error), "404", "reset" (connection closed before a response),
    "truncate" (full Content-Length, half the body), "stall" (no answer for `stall_s`), "slow"
    (a correct answer after `stall_s`), "always500" (every request).
    """

    def __init__(self, faults: dict[str, list[str]] | None = None, stall_s: float = 3.0) -> None:
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.stall_s = stall_s
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()

    def next_fault(self, name: str) -> str | None:
        with self._lock:
            self.hits[name] = self.hits.get(name, 0) + 1
            queue = self.faults.get(name, [])
            if queue and queue[0] == "always500":
                return "500"
            return queue.pop(0) if queue else None


def _faulty_handler(plan: FaultPlan):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            fault = plan.next_fault(name)
            if fault in ("500", "503", "404"):
                self.send_error(int(fault))
                return
            if fault == "reset":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if fault in ("stall", "slow"):
                time.sleep(plan.stall_s)
                if fault == "stall":
                    self.close_connection = True
                    return
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{len(body):x}-{path.stat().st_mtime_ns:x}"')
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if fault == "truncate" else body)
            if fault == "truncate":
                self.close_connection = True

    return Handler


def faulty_file_server(directory: Path, plan: FaultPlan):
    """Like `file_server`, injecting the plan's faults."""
    return file_server(directory, handler=_faulty_handler(plan))


class Trickle:
    """How a trickling file server paces bodies, and what it saw.

    Each body goes out in `chunk_bytes` pieces `delay_s` apart; after the first piece the server
    waits for `release` (up to `hold_s`), so a test decides how long downloads stay in flight.
    GETs are counted per file name in `hits`; `wait_for_requests` awaits them.
    """

    def __init__(self, chunk_bytes: int = 64 * 1024, delay_s: float = 0.01, hold_s: float = 60.0) -> None:
        self.chunk_bytes = chunk_bytes
        self.delay_s = delay_s
        self.hold_s = hold_s
        self.release = threading.Event()
        self.hits: dict[str, int] = {}
        self._seen = threading.Condition()

    def count(self, name: str) -> None:
        with self._seen:
            self.hits[name] = self.hits.get(name, 0) + 1
            self._seen.notify_all()

    def wait_for_requests(self, names: list[str], timeout_s: float) -> bool:
        """True once every one of `names` has been requested at least once."""
        with self._seen:
            return self._seen.wait_for(lambda: all(n in self.hits for n in names), timeout=timeout_s)


def _trickle_handler(trickle: Trickle):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            trickle.count(self.path.rsplit("/", 1)[-1])
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{len(body):x}-{path.stat().st_mtime_ns:x}"')
            self.end_headers()
            step = trickle.chunk_bytes
            try:
                self.wfile.write(body[:step])
                self.wfile.flush()
                trickle.release.wait(trickle.hold_s)
                for start in range(step, len(body), step):
                    time.sleep(trickle.delay_s)  # pacing, so the download stays in flight for a while
                    self.wfile.write(body[start : start + step])
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (a failing test killed it)

    return Handler


def trickle_file_server(directory: Path, trickle: Trickle):
    """Like `file_server`, streaming bodies slowly as `trickle` says and counting requests."""
    return file_server(directory, handler=_trickle_handler(trickle))


@contextlib.contextmanager
def s3_server(root: Path) -> Iterator[str]:
    """moto's S3-protocol server (in memory: create buckets after each start)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with running_process(cmd, f"http://127.0.0.1:{port}/moto-api/", root / "moto.log", base_env()):
        yield f"http://127.0.0.1:{port}"


def wait_for(condition, *, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout_s` saying `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@dataclasses.dataclass(frozen=True)
class Proc:
    """One process as /proc shows it; (pid, start) names it even if its PID is later reused."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot (stat field 22)
    state: str
    cmdline: str


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:  # gone (or going) between listing and reading
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0], cmdline)


def all_processes() -> dict[int, Proc]:
    procs = (read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return {p.pid: p for p in procs if p is not None}


def process_tree(roots: set[int], groups: set[int]) -> set[Proc]:
    """Live processes in any of `groups` (session or process-group ids), plus every descendant of them and of `roots`."""
    procs = all_processes()
    found = {p.pid for p in procs.values() if p.sid in groups or p.pgid in groups} | (roots & procs.keys())
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {procs[pid] for pid in found}


def still_running(procs: set[Proc]) -> set[Proc]:
    """Those of `procs` still running: same PID *and* start time (a reused PID is someone else), not a zombie."""
    alive = set()
    for p in procs:
        now = read_proc(p.pid)
        if now is not None and now.start == p.start and now.state != "Z":
            alive.add(now)
    return alive


def processes_with_env(name: str, value: str) -> set[Proc]:
    """Live processes whose environment holds `name=value` (e.g. a flow run's PREFECT__FLOW_RUN_ID)."""
    wanted = f"{name}={value}".encode()
    found = set()
    for pid, proc in all_processes().items():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and proc.state != "Z":
            found.add(proc)
    return found
