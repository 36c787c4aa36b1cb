"""Timing and memory measurement: stage timers inside a process, wall/CPU time and peak RSS around one."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
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
    stdout: str
    result: dict


class ChildFailed(RuntimeError):
    pass


def run_measured(cmd: list[str], *, env: dict[str, str], cwd: Path, result_file: Path | None = None, timeout_s: float = 3600) -> Measured:
    """Run `cmd` to completion in `cwd` (its logs go there); peak RSS and CPU come from wait4, so they are this child's own."""
    cwd.mkdir(parents=True, exist_ok=True)
    out_path, err_path = cwd / "child.stdout", cwd / "child.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
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
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise ChildFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{err_path.read_text(errors='replace')[-4000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mb=usage.ru_maxrss / 1024,
        other_cpu_cores=max(0.0, busy - cpu) / wall,
        stdout=out_path.read_text(errors="replace"),
        result=json.loads(result_file.read_text()) if result_file is not None else {},
    )
