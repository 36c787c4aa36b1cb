"""Real local servers for tests, all bound to 127.0.0.1 on free ports."""

from __future__ import annotations

import contextlib
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
        str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow-server.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]
    with running_process(cmd, f"http://127.0.0.1:{port}/health", root / "mlflow-server.log", env):
        yield f"http://127.0.0.1:{port}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def file_server(directory: Path, handler: type[http.server.BaseHTTPRequestHandler] = _QuietHandler) -> Iterator[str]:
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


@contextlib.contextmanager
def s3_server(root: Path) -> Iterator[str]:
    """moto's S3-protocol server (in memory: create buckets after each start)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with running_process(cmd, f"http://127.0.0.1:{port}/moto-api/", root / "moto.log", base_env()):
        yield f"http://127.0.0.1:{port}"
