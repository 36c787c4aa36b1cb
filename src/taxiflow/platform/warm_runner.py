"""The warm runner: taxiflow's flows, Prefect, MLflow and XGBoost imported once, for every later run.

Importing them costs ~3.5 s of CPU per `taxiflow train` (most of the command's fixed cost). The
first `train`, `score` or `backfill` without a runner starts one in the background (its own session,
scrubbed environment, output to a log); it imports everything and listens on a Unix socket. Later
commands send it their argv, environment, working directory and terminal (fds 0-2, passed over the
socket); it forks a child that becomes that command: the child runs the usual `main` with the
caller's environment (Prefect's settings and logging rebuilt from it: `cli._use_warm_prefect`), so the
run is the same flow run, visible in the same Prefect UI, and only the imports are skipped.

The caller waits for the child's exit status (the runner reaps it and sends it), forwards Ctrl-C and
SIGTERM to it, and if the caller dies the child is interrupted too. The runner is keyed by what its
imports depend on (Python, taxiflow's code, native-library variables): a changed checkout or
environment gets a new runner, never stale code. `taxiflow stack status` lists runners, `taxiflow
stack down` stops them, and each stops itself after `TAXIFLOW_WARM_RUNNER_IDLE_S` seconds without a
run (0: no runner, every command imports for itself).

This module's top level imports only the standard library: the caller's side runs before anything
heavy is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import sysconfig
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taxiflow.platform.processes import ServiceProcess
    from taxiflow.settings import TaxiflowSettings

MARKER = "taxiflow.platform.warm_runner"
PRELOAD = (
    *("taxiflow.cli", "taxiflow.console", "taxiflow.flows.train", "taxiflow.flows.score", "taxiflow.flows.backfill", "taxiflow.flows.tune"),
    *("taxiflow.platform.local_prefect", "taxiflow.platform.processes"),
    # What a run imports only when it gets there (found by diffing sys.modules around a real `train`):
    # ~840 modules, ~0.6 s of the real pair's flow time (make bench); only modules that start no thread or process on import.
    *("prefect.flow_engine", "prefect.task_engine", "prefect.concurrency.sync", "anyio._backends._asyncio"),
    *("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy.dialects.sqlite"),
    *("alembic.runtime.migration", "alembic.command", "alembic.config"),
    *("mlflow.xgboost", "mlflow.pyfunc", "mlflow.tracing", "opentelemetry.sdk.trace", "git", "graphviz", "email.policy"),
    *("xgboost", "xgboost.callback", "sklearn.metrics", "sklearn.model_selection", "PIL.Image", "optuna"),
)
# Read when a library loads (OpenMP, allocators, the interpreter), not per call: part of the runner's key.
_LOAD_TIME_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_", "PYTHON", "MALLOC_", "POLARS_", "ARROW_", "XGBOOST_")
# What the runner process itself keeps of its starter's environment: nothing a run's credentials live in.
_RUNNER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "VIRTUAL_ENV")
_LENGTH = struct.Struct("!I")
_IMPORT_ENV: dict[str, str] = {}  # what the runner's imports added to the environment (`serve`)
CONNECT_TIMEOUT_S = 5.0


def runner_key(environ: Mapping[str, str] = os.environ) -> str:
    """What the runner's imports depend on: interpreter, taxiflow's code, installed packages, load-time variables."""
    # The environment (venv) and the interpreter it runs, whichever of its names (python, python3) started us.
    digest = hashlib.sha256(f"{sys.prefix}\n{os.path.realpath(sys.executable)}\n".encode())
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(package)}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    with contextlib.suppress(OSError):  # installing or removing a package changes site-packages' mtime
        digest.update(str(os.stat(sysconfig.get_paths()["purelib"]).st_mtime_ns).encode())
    for name in sorted(k for k in environ if k.startswith(_LOAD_TIME_ENV)):
        digest.update(f"{name}={environ[name]}\n".encode())
    return digest.hexdigest()[:16]


def runner_dir(settings: TaxiflowSettings) -> Path:
    return (settings.warm_runner_dir or settings.state_dir / "warm-runner").resolve()


@contextlib.contextmanager
def _socket_path(directory: Path, key: str):
    """A short path to the socket (AF_UNIX paths are limited to 108 bytes; state dirs can be deeper)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{key}.sock"
    finally:
        os.close(fd)


def _send(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):  # the caller may be gone
        conn.sendall(json.dumps(message).encode() + b"\n")


# ---------------------------------------------------------------- the caller's side


def run_in_warm_runner(argv: list[str], directory: Path, key: str) -> int | None:
    """Run `taxiflow argv` in the runner for `key`; its exit code, or None if no runner took it (run it here)."""
    if not (directory / f"{key}.sock").exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        with _socket_path(directory, key) as path:
            conn.connect(path)
        request = json.dumps({"key": key, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [_LENGTH.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        replies = conn.makefile("rb")
        first = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None  # no runner, a stale socket or a runner going away: nothing ran
    if "pid" not in first:
        conn.close()
        return None  # refused (another key) or could not fork: nothing ran
    child = int(first["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    conn.settimeout(None)
    try:
        line = replies.readline()
    finally:
        conn.close()
    if not line:
        print(f"taxiflow: the run (pid {child}) ended without an exit status: its warm runner was stopped", file=sys.stderr)
        return 1
    return int(json.loads(line)["exit"])


def ensure_warm_runner(directory: Path, key: str, idle_s: float) -> ServiceProcess | None:
    """Start the runner for `key` in the background unless one runs or is starting; the new one, else None."""
    from taxiflow.io.file_lock import exclusive_file_lock
    from taxiflow.platform.processes import ServiceProcess, is_running, launch_service

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = directory / f"{key}.json"
    with exclusive_file_lock(directory / f"{key}.lock"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            if is_running(ServiceProcess(**json.loads(record.read_text()))):
                return None
        env = {k: v for k, v in os.environ.items() if k in _RUNNER_ENV or k.startswith(_LOAD_TIME_ENV)}
        cmd = [sys.executable, "-m", MARKER, "--dir", str(directory), "--key", key, "--idle-s", str(idle_s)]
        service, _ = launch_service("warm-runner", cmd, env=env, log=directory / f"{key}.log", port=None, health_url=None, marker=MARKER)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(service.to_json()))
        os.replace(tmp, record)
        return service


@dataclass(frozen=True)
class RunnerStatus:
    key: str
    pid: int
    ready: bool  # listening (else still importing)
    runs: int
    idle_s: float
    log: str


def _records(directory: Path) -> list[tuple[str, ServiceProcess]]:
    from taxiflow.platform.processes import ServiceProcess

    found = []
    for record in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, TypeError):
            found.append((record.stem, ServiceProcess(**json.loads(record.read_text()))))
    return found


def warm_runners(directory: Path) -> list[RunnerStatus]:
    """The runners that live, with how many runs each is running now."""
    from taxiflow.platform.processes import is_running, process_tree

    statuses = []
    for key, service in _records(directory):
        if not is_running(service):
            continue
        state = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((directory / f"{key}.state").read_text())
        runs = len(process_tree(service)) - 1
        statuses.append(RunnerStatus(key, service.pid, (directory / f"{key}.sock").exists(), max(runs, 0), float(state.get("idle_s", 0)), service.log))
    return statuses


def stop_warm_runners(directory: Path) -> list[int]:
    """Stop every runner (and any run it is running); the PIDs stopped."""
    from taxiflow.platform.processes import stop_service

    stopped = []
    for key, service in _records(directory):
        if stop_service(service):
            stopped.append(service.pid)
        for suffix in (".json", ".sock", ".state"):
            (directory / f"{key}{suffix}").unlink(missing_ok=True)
    return stopped


# ---------------------------------------------------------------- the runner


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _flags, _addr = socket.recv_fds(conn, _LENGTH.size, 3)
    if len(header) != _LENGTH.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    (length,) = _LENGTH.unpack(header)
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    return json.loads(body), fds


def _peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _interrupt_when_caller_leaves(conn: socket.socket) -> None:
    """The caller closed its end (killed, or its terminal closed): interrupt this run as Ctrl-C would."""
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
    os._exit(130)


def _become_the_command(conn: socket.socket, request: dict, fds: list[int], runner_fds: list[int]) -> None:
    """In the forked child: take the caller's terminal, directory and environment, run `main`, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in runner_fds:  # the listener among them: a run must not hold the runner's socket open
            os.close(fd)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(_IMPORT_ENV | request["env"])
        # As in a process that has not imported Prefect yet: no root handler until the run picks its
        # Prefect server and rebuilds Prefect's logging (cli._use_warm_prefect), so what libraries log
        # before that (urllib3's retries in MLflow's preflight) stays off the console, as it would.
        import logging

        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
        _send(conn, {"pid": os.getpid()})
        threading.Thread(target=_interrupt_when_caller_leaves, args=(conn,), daemon=True).start()
        import atexit

        from taxiflow import cli

        cli.IN_WARM_RUNNER = True
        try:
            code = cli.main(request["argv"])
        except KeyboardInterrupt:
            code = 130
        except SystemExit as exc:  # argparse's errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        atexit._run_exitfuncs()  # what a normal exit runs (a run's lease on the local server, Prefect's own)
        cli.flush_run_output()
    except BaseException:  # noqa: BLE001 - nothing may return into the runner's loop
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def serve(directory: Path, key: str, idle_s: float) -> int:
    from taxiflow.cli import apply_default_env
    from taxiflow.console import quiet_prefect_console

    apply_default_env()
    quiet_prefect_console()  # the default console; a child rebuilds Prefect's logging from its caller's environment
    started = time.monotonic()
    import importlib

    before_imports = dict(os.environ)
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional library missing: runs import it (and fail) as they would anyway
            print(f"taxiflow warm runner {key}: not preloaded: {module} ({exc})", flush=True)
    print(f"taxiflow warm runner {key}: imports done in {time.monotonic() - started:.1f} s", flush=True)
    # Modules set defaults in the environment when imported (io/tracking.py: MLflow's HTTP retries and
    # timeout, no URL on stdout). A process that imports them itself has them: each child gets them
    # too, under its caller's environment (what the caller sets wins, as `setdefault` would let it).
    global _IMPORT_ENV
    _IMPORT_ENV = {k: v for k, v in os.environ.items() if before_imports.get(k) != v}

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping = []
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop (set_wakeup_fd) when a run ends
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_file = directory / f"{key}.sock"
    sock_file.unlink(missing_ok=True)
    with _socket_path(directory, key) as path:
        listener.bind(path)
    os.chmod(sock_file, 0o600)
    listener.listen(16)
    (directory / f"{key}.state").write_text(json.dumps({"idle_s": idle_s, "pid": os.getpid()}))
    selector = selectors.EpollSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    runs: dict[int, _Run] = {}
    last_active = time.monotonic()
    try:
        while not stopping:
            for ready, _ in selector.select(timeout=1.0):
                if ready.fileobj is listener:
                    _accept(listener, key, runs, runner_fds=[listener.fileno(), wake_r, wake_w, selector.fileno()])
                else:
                    os.read(wake_r, 512)
            _reap(runs, key)
            if runs:
                last_active = time.monotonic()
            elif time.monotonic() - last_active >= idle_s:
                print(f"taxiflow warm runner {key}: no run for {idle_s:.0f} s: stopping", flush=True)
                break
    finally:
        selector.close()
        listener.close()
        # Only this runner's own files: a new runner for the key may already have replaced them.
        if _names_me(directory / f"{key}.json"):
            for suffix in (".sock", ".state", ".json"):
                (directory / f"{key}{suffix}").unlink(missing_ok=True)
    return 0


def _names_me(record: Path) -> bool:
    try:
        return json.loads(record.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


@dataclass
class _Run:
    conn: socket.socket
    command: str
    started: float


def _accept(listener: socket.socket, key: str, runs: dict[int, _Run], runner_fds: list[int]) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        if _peer_uid(conn) != os.getuid():
            raise ValueError("another user")
        request, fds = _receive(conn)
        if request.get("key") != key:
            raise ValueError("another key")
        conn.settimeout(None)
        pid = os.fork()
    except (OSError, ValueError) as exc:
        _send(conn, {"refused": str(exc)})
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    if pid == 0:
        _become_the_command(conn, request, fds, runner_fds)  # never returns
    for fd in fds:
        os.close(fd)
    command = next((arg for arg in request["argv"] if not arg.startswith("-")), "?")
    runs[pid] = _Run(conn, command, time.monotonic())


def _reap(runs: dict[int, _Run], key: str) -> None:
    while runs:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        run = runs.pop(pid, None)
        if run is not None:
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
            # One line per run, without its arguments (a --tracking-uri can carry credentials); the benchmark reads its peak RSS here.
            print(
                f"taxiflow warm runner {key}: run pid {pid} ({run.command}) exit {code} after {time.monotonic() - run.started:.1f} s, "
                f"peak RSS {usage.ru_maxrss / 1024:.0f} MB",
                flush=True,
            )
            _send(run.conn, {"exit": code})
            run.conn.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Keep taxiflow's imports warm and run `taxiflow` commands in forked children.")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--idle-s", type=float, required=True)
    args = parser.parse_args(argv)
    return serve(args.dir, args.key, args.idle_s)


if __name__ == "__main__":
    sys.exit(main())
