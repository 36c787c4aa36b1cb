"""Timing and memory measurement: stage timers inside a process, wall/CPU time and peak RSS around one."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def current_rss_mb() -> float:
    """Resident memory of this process now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def machine_load(sample_s: float = 2.0) -> float:
    """Cores busy (with anything) on average over the next `sample_s` seconds."""
    before = _busy_cpu_s()
    time.sleep(sample_s)
    return (_busy_cpu_s() - before) / sample_s


def wait_for_quiet(max_load: float, timeout_s: float) -> float:
    """Wait until the machine's load is at most `max_load` cores, or `timeout_s` passes; the last load seen."""
    deadline = time.monotonic() + timeout_s
    load = machine_load()
    while load > max_load and time.monotonic() < deadline:
        load = machine_load()
    return load


@dataclass
class StageTimer:
    """Seconds per named stage, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class Measured:
    """One child process, measured from outside, and the JSON it wrote (if any)."""

    wall_s: float
    cpu_s: float  # user + system of the child and the descendants it reaped
    peak_rss_mb: float  # the largest single process among them (wait4's ru_maxrss)
    other_cpu_cores: float  # average cores busy with anything else meanwhile: contention on a shared machine
    server_cpu_s: float  # CPU of the server the run talked to (`server_cpu`), meanwhile: not counted as other work
    stdout: str
    stderr: str
    result: dict


class ChildFailed(RuntimeError):
    pass


def run_measured(
    cmd: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    result_file: Path | None = None,
    timeout_s: float = 3600,
    server_cpu: Callable[[], float] | None = None,
) -> Measured:
    """Run `cmd` to completion in `cwd` (its logs go there); peak RSS and CPU come from wait4, so they are this child's own.

    `server_cpu`: CPU seconds so far of a server the child talks to (in another session, so wait4 does
    not count it); what it used meanwhile is left out of the other load.
    """
    server_cpu_now = server_cpu or (lambda: 0.0)
    cwd.mkdir(parents=True, exist_ok=True)
    out_path, err_path = cwd / "child.stdout", cwd / "child.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        server_before = server_cpu_now()
        busy_before, start = _busy_cpu_s(), time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the child is in its own session, so end it explicitly.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall, busy = time.perf_counter() - start, _busy_cpu_s() - busy_before
        server = max(0.0, server_cpu_now() - server_before)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise ChildFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{err_path.read_text(errors='replace')[-4000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mb=usage.ru_maxrss / 1024,
        other_cpu_cores=max(0.0, busy - cpu - server) / wall,
        server_cpu_s=server,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        result=json.loads(result_file.read_text()) if result_file is not None else {},
    )


# A server a measured run talks to (the Prefect server standing in for the stack, or the local one
# `taxiflow train` keeps warm) runs in its own session: its CPU is not the run's own (wait4 does not
# see it) but is not other work either, and its memory is reported separately.


def _stat_after_comm(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_after_comm(int(entry.name))) is not None and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return sorted(pids)


def session_cpu_s(sid: int | None) -> float:
    """CPU seconds used so far by the live processes of session `sid` and the children they reaped (0 for None)."""
    if sid is None:
        return 0.0
    ticks = 0
    for pid in session_pids(sid):
        if (fields := _stat_after_comm(pid)) is not None:
            ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / _CLOCK_TICKS


def session_memory(sid: int) -> list[dict]:
    """Each live process of session `sid`: pid, command, resident memory now and at its peak (VmRSS, VmHWM), MB."""
    processes = []
    for pid in session_pids(sid):
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "VmHWM" not in status:
            continue  # a zombie
        processes.append(
            {
                "pid": pid,
                "cmd": cmdline[:200],
                "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
            }
        )
    return processes
