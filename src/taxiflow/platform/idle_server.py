"""Run a server (the local Prefect server) until no taxiflow run has used it for a while.

`taxiflow train` starts this in its own session when no Prefect API is configured, so later runs
skip Prefect's ~10 s server start:

    python -m taxiflow.platform.idle_server --idle-s 900 --dir <state>/local-prefect -- prefect server start ...

A run holds a lease while it uses the server: a file `leases/<pid>-<start ticks>`. The server is busy
while any lease's process lives (a crashed run's lease is dropped: its process is gone). `idle-s`
seconds after the last lease ended (or after the start, if none came), this process stops the server
and exits. It decides under the same lock runs take before they pick a server, so a run never
leases a server that is being stopped: it either sees the state file (and this sees its lease) or
finds none and starts a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from taxiflow.io.file_lock import exclusive_file_lock
from taxiflow.platform.processes import start_ticks

POLL_S = 1.0
STATE_FILE, LOCK_FILE, LEASES_DIR = "server.json", "start.lock", "leases"


def live_leases(leases: Path) -> list[str]:
    """Leases whose run still lives; a lease left by a run that died is removed."""
    live = []
    for entry in sorted(leases.iterdir()) if leases.is_dir() else ():
        pid, sep, ticks = entry.name.partition("-")
        if not (sep and pid.isdigit() and ticks.isdigit()):
            continue  # not a lease (a lease being written has a dot in its name)
        if start_ticks(int(pid)) == int(ticks):
            live.append(entry.name)
        else:
            entry.unlink(missing_ok=True)
    return live


def idle_for(now: float, last_active: float) -> float:
    return max(0.0, now - last_active)


def _names_me(state: Path) -> bool:
    try:
        return json.loads(state.read_text()).get("service", {}).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def _retire(directory: Path) -> bool:
    """Under the runs' lock: if still unleased, forget this server (runs then start a new one). True: stop now."""
    with exclusive_file_lock(directory / LOCK_FILE):
        if live_leases(directory / LEASES_DIR):
            return False
        state = directory / STATE_FILE
        if _names_me(state):
            state.unlink(missing_ok=True)
        return True


def _stop(server: subprocess.Popen, timeout_s: float = 20) -> int:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode


def serve_until_idle(cmd: list[str], directory: Path, idle_s: float) -> int:
    leases = directory / LEASES_DIR
    leases.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(cmd)  # same session and group: stopping this service's tree stops both

    def stop_on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    last_active = time.monotonic()
    try:
        while server.poll() is None:
            if live_leases(leases):
                last_active = time.monotonic()
            elif idle_for(time.monotonic(), last_active) >= idle_s and _retire(directory):
                print(f"taxiflow: no run used this server for {idle_s:.0f} s: stopping it", flush=True)
                break
            time.sleep(POLL_S)
    finally:
        with exclusive_file_lock(directory / LOCK_FILE):
            if _names_me(directory / STATE_FILE):
                (directory / STATE_FILE).unlink(missing_ok=True)
        code = _stop(server)
    return code if code and code > 0 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a server until no taxiflow run has leased it for --idle-s seconds.")
    parser.add_argument("--idle-s", type=float, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="holds server.json, start.lock and leases/")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the server's command")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no server command given")
    return serve_until_idle(cmd, args.dir, args.idle_s)


if __name__ == "__main__":
    sys.exit(main())
