"""Run the course pipeline (baseline) and taxiflow side by side; write a table, plots and JSON.

    .venv/bin/python -m benchmarks.run            # full: real pair, 3.4M/1M pairs (rows repeat / non-repeating)
    .venv/bin/python -m benchmarks.run --scaling  # ... and taxiflow's scaling curve (3.4M-13.6M rows)
    .venv/bin/python -m benchmarks.run --quick    # real pair only, 1 boosting round (the smoke test)

Every measurement is a fresh child process (benchmarks/child.py, or the `taxiflow` command), so
each peak RSS is that run's own. Results go to benchmarks/out/ (results.json, results.md, *.png).

`taxiflow train` runs without PREFECT_API_URL use one TAXIFLOW_STATE_DIR and PREFECT_HOME of this
run (under its temporary directory): the first starts the local Prefect server, later ones reuse
it, and `taxiflow stack down` with that state directory stops it when the benchmark ends, failed
or not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

from benchmarks.make_data import resampled_pair
from benchmarks.measure import Measured, run_measured, session_cpu_s, session_memory, session_pids, wait_for_quiet
from benchmarks.pairs import REPO, Pair, real_pair, tlc_month
from tests.support.servers import VENV_BIN, base_env, free_port, running_process

OUT_DIR = REPO / "benchmarks" / "out"
LARGE = (3_400_000, 1_000_000)
SCALING_TRAIN_ROWS = (3_400_000, 6_800_000, 13_600_000)
QUICK_ROUNDS = 1
# The local server runs keep warm must not stop between pairs (stopped by `stack down` at the end;
# if this process is killed, it stops itself after this long).
LOCAL_IDLE_S = 3600
# Runs on a new PREFECT_HOME and state directory: one per home, so measured once.
FIRST_RUNS = ("cli_local_first", "cli_temp_first")
# The measurements every pair needs for the stage tables and the derived targets.
STANDARD = ("course", "taxiflow", "course_read_features", "taxiflow_read_features", "decode_floor", "train_floor", "flow_server", "cli_server")
# Repeated on every pair, not only the real one: the orchestration overhead is the difference of the
# first two, and the read -> features ratios compare sub-second runs (the decode floor varies 3x).
REPEATED_EVERYWHERE = ("taxiflow", "flow_server", "course_read_features", "taxiflow_read_features", "decode_floor")


@dataclass(frozen=True)
class Settings:
    quick: bool
    num_boost_round: int | None  # None: the course's 100
    repeat: int  # runs per measurement on the real pair (the fastest is kept)
    retries: int  # extra runs of a measurement disturbed by other work on the machine
    max_other_load: float  # cores busy elsewhere above which a run counts as disturbed
    wait_quiet_s: float  # how long to wait, before each run, for the machine to fall quiet
    large: tuple[int, int]
    scaling_train_rows: tuple[int, ...]  # empty: no scaling curve
    prefect_api: str | None  # a running server to use instead of starting one


@dataclass(frozen=True)
class StackServer:
    """The Prefect server standing in for the stack's: `taxiflow train` reaches it through PREFECT_API_URL."""

    api_url: str
    sid: int | None  # its session, when this run started it (its CPU is then not counted as other work)

    def cpu_s(self) -> float:
        return session_cpu_s(self.sid)


@dataclass
class LocalPrefect:
    """The state directory and PREFECT_HOME of this run's `taxiflow train` runs without PREFECT_API_URL."""

    state_dir: Path
    prefect_home: Path
    shutdown: dict | None = None  # set by `local_prefect` on exit: what `stack down` said and stopped

    def env(self) -> dict[str, str]:
        return {
            "TAXIFLOW_STATE_DIR": str(self.state_dir),
            "PREFECT_HOME": str(self.prefect_home),
            "TAXIFLOW_LOCAL_PREFECT_IDLE_S": str(LOCAL_IDLE_S),
            **self.runner_env(),
        }

    def runner_env(self) -> dict[str, str]:
        """The warm runner the first run starts and later runs (stack up or not) use; stopped with the local server."""
        return {"TAXIFLOW_WARM_RUNNER_DIR": str(self.state_dir / "warm-runner"), "TAXIFLOW_WARM_RUNNER_IDLE_S": str(LOCAL_IDLE_S)}

    def runner_runs(self) -> set[str]:
        """The warm runner's one line per run it ran (pid, command, exit, peak RSS), from its log."""
        lines: set[str] = set()
        for log in (self.state_dir / "warm-runner").glob("*.log"):
            lines |= {line for line in log.read_text(errors="replace").splitlines() if ": run pid " in line}
        return lines

    def runner_service(self) -> dict | None:
        """The live warm runner's record, None if none runs."""
        for record in sorted((self.state_dir / "warm-runner").glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                service = json.loads(record.read_text())
                if Path(f"/proc/{service['pid']}").exists():
                    return service
        return None

    def wait_runner_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not list((self.state_dir / "warm-runner").glob("*.sock")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no warm runner listening in {self.state_dir / 'warm-runner'} after {timeout_s:.0f} s")
            time.sleep(0.2)

    def service(self) -> dict | None:
        """The running local server's record (server.json's `service`), None if none runs."""
        try:
            service = json.loads((self.state_dir / "local-prefect" / "server.json").read_text())["service"]
        except (OSError, ValueError, KeyError):
            return None
        return service if Path(f"/proc/{service['pid']}").exists() else None

    def cpu_s(self) -> float:
        """The local server's CPU so far, and the warm runner's (runs it forks are its children: their CPU is theirs, not other work)."""
        return sum(session_cpu_s(service["sid"]) for service in (self.service(), self.runner_service()) if service)

    def memory(self, service: dict | None = None) -> dict | None:
        """Its processes (supervisor, `prefect server start`, ...) now: each one's RSS and peak RSS, and their sums (`service`: another's)."""
        service = service or self.service()
        if service is None:
            return None
        processes = session_memory(service["sid"])
        return {
            "pid": service["pid"],
            "start_ticks": service["start_ticks"],
            "processes": processes,
            "rss_mb": sum(p["rss_mb"] for p in processes),
            "peak_rss_mb": sum(p["peak_rss_mb"] for p in processes),
        }

    def stop(self) -> str:
        """`taxiflow stack down` with this state directory: stops the local server if one runs."""
        env = base_env(**{k: v for k, v in self.env().items() if k != "TAXIFLOW_LOCAL_PREFECT_IDLE_S"})
        proc = subprocess.run([str(VENV_BIN / "taxiflow"), "stack", "down"], env=env, cwd=self.state_dir.parent, capture_output=True, text=True, timeout=120)
        return (proc.stdout + proc.stderr).strip()


class Bench:
    """Runs measured children in a scratch directory and shapes their records."""

    def __init__(self, settings: Settings, scratch: Path, stack: StackServer, local: LocalPrefect, store_template: Path) -> None:
        self.settings = settings
        self.scratch = scratch
        self.stack = stack
        self.local = local
        self.store_template = store_template
        self._runs = 0

    def _workdir(self, name: str) -> Path:
        self._runs += 1
        path = self.scratch / f"{self._runs:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def _env(self, work: Path, *, server: bool) -> dict[str, str]:
        env = base_env(TAXIFLOW_STATE_DIR=str(work / "state"), PREFECT_HOME=str(work / "prefect-home"))
        if server:
            env["PREFECT_API_URL"] = self.stack.api_url
        # Children import `benchmarks` and `taxiflow` from this checkout.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def _store(self, directory: Path) -> str:
        """A new MLflow store in `directory` whose schema already exists (as after a first run); its URI.

        Every pipeline's full run gets one, so none pays MLflow's schema creation (1-7 s here,
        depending on load) except the first runs, which start from nothing.
        """
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.store_template, directory / "mlflow.db")
        return f"sqlite:///{directory / 'mlflow.db'}"

    def child(self, kind: str, pair: Pair, *, full: bool, server: bool = False) -> dict:
        """One `benchmarks.child` process; `full` runs through MLflow registration."""
        work = self._workdir(f"{pair.name}-{kind}")
        cmd = [sys.executable, "-m", "benchmarks.child", kind, "--train", str(pair.train), "--val", str(pair.val), "--result", str(work / "result.json")]
        if full:
            cmd += ["--tracking-dir", str(work / "mlflow")]
            # The flow tracks to TAXIFLOW_STATE_DIR's store, the scripts to --tracking-dir's.
            self._store(work / ("state" if kind == "flow" else "mlflow"))
        if self.settings.num_boost_round is not None:
            cmd += ["--num-boost-round", str(self.settings.num_boost_round)]
        env = self._env(work, server=server)
        measured = run_measured(cmd, env=env, cwd=work, result_file=work / "result.json", server_cpu=self.stack.cpu_s if server else None)
        return _record(measured)

    def cli(self, pair: Pair, mode: str) -> dict:
        """`taxiflow train --json` as a user runs it; `mode` says how it reaches Prefect.

        - `stack`: PREFECT_API_URL points at a running server (as with `taxiflow stack up`);
        - `local_first`, `local`: no PREFECT_API_URL, this benchmark's state directory and
          PREFECT_HOME: the first run starts the local server (and migrates a new database), later
          runs reuse it;
        - `temp_first`, `temp`: the old mode (TAXIFLOW_LOCAL_PREFECT_IDLE_S=0), Prefect's temporary
          server inside the run: on a new PREFECT_HOME (migrated first), and on one migrated before
          (by an unmeasured run), as a user's is on later runs.

        `*_first` runs start from nothing (their MLflow store is created too); the others track to a
        new store whose schema exists (`_store`), so every run registers a first version.
        """
        work = self._workdir(f"{pair.name}-cli-{mode}")
        cmd = [
            str(VENV_BIN / "taxiflow"), "train", "--taxi", "green", "--train-month", tlc_month(pair.train),
            "--val-month", tlc_month(pair.val), "--data-dir", str(pair.directory), "--json",
            # Every run reads and prepares its months, as the course does: runs in `local` mode share a
            # state dir, whose prepared-trips cache would serve later runs (benchmarks/backfill.py measures it).
            "--refresh",
        ]  # fmt: skip
        if self.settings.num_boost_round is not None:
            cmd += ["--num-boost-round", str(self.settings.num_boost_round)]
        env = self._env(work, server=mode == "stack")
        server_cpu: Callable[[], float] | None = None
        if mode == "stack":
            env |= self.local.runner_env()
            server_cpu = lambda: self.stack.cpu_s() + self.local.cpu_s()  # noqa: E731
        elif mode in ("local_first", "local"):
            env |= self.local.env()
            server_cpu = self.local.cpu_s
        elif mode in ("temp_first", "temp"):
            env["TAXIFLOW_LOCAL_PREFECT_IDLE_S"] = "0"
        else:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "temp":
            env["PREFECT_HOME"] = str(self.scratch / "prefect-home-temp")
            if not Path(env["PREFECT_HOME"]).exists():
                warm_up = self._workdir(f"{pair.name}-cli-temp-warm-up")
                subprocess.run(cmd, env=env | {"TAXIFLOW_STATE_DIR": str(warm_up / "state")}, cwd=warm_up, check=True, capture_output=True)
        if not mode.endswith("_first"):
            env["MLFLOW_TRACKING_URI"] = self._store(work / "mlflow")
        runs_before = self.local.runner_runs()
        measured = run_measured(cmd, env=env, cwd=work, server_cpu=server_cpu)
        started = "starting a local Prefect server" in measured.stderr
        if started != (mode == "local_first"):
            raise RuntimeError(f"{mode} run {'started' if started else 'did not start'} the local Prefect server; see {work}/child.stderr")
        # The first run starts the warm runner; every later `stack` and `local` run must go through it (the old mode never).
        started_runner = "starting a warm runner" in measured.stderr
        in_runner = sorted(self.local.runner_runs() - runs_before)
        if started_runner != (mode == "local_first") or len(in_runner) != (mode in ("stack", "local")):
            raise RuntimeError(f"{mode} run: started a warm runner {started_runner}, ran in one {in_runner}; see {work}/child.stderr")
        if mode == "local_first":
            self.local.wait_runner_ready()
        summary = json.loads(measured.stdout.strip().splitlines()[-1])
        facts = {k: summary[k] for k in ("rmse", "rows_train", "rows_val", "n_features", "model_version")}
        flow_s = summary["seconds"]["flow"]
        record = _record(measured)
        if in_runner:
            # The run is the runner's forked child, not this command's process: its peak RSS (which includes
            # everything it inherited from the runner) is the one the runner logged; the caller's own is tiny.
            record |= {"peak_rss_mb": float(in_runner[0].rsplit("peak RSS ", 1)[1].split()[0]), "caller_peak_rss_mb": measured.peak_rss_mb}
        return record | {
            "facts": facts | {"flow_s": flow_s, "fixed_s": measured.wall_s - flow_s, "started_local_server": started, "in_warm_runner": bool(in_runner)}
        }

    def measure(self, name: str, pair: Pair, run: Callable[[], dict], *, once: bool = False) -> dict:
        """The fastest of `repeat` runs on the real pair (a second of noise matters there), one run otherwise (or `once`),
        except REPEATED_EVERYWHERE: XGBoost's time on this machine varies by seconds between identical
        runs (16-21 s on the large pair), more than the orchestration overhead itself, and a bare decode
        of the large pair took 0.13 s in one run and 0.39 s in another.

        The machine may be shared: with 2 cores, one core busy elsewhere makes XGBoost's two threads
        several times slower. A run during which other work kept more than `max_other_load` cores
        busy is repeated (up to `retries` times) and the least disturbed one kept; each run first
        waits (up to `wait_quiet_s`) for the machine to fall quiet.
        """

        def quiet_run() -> dict:
            if self.settings.wait_quiet_s > 0:
                load = wait_for_quiet(self.settings.max_other_load, self.settings.wait_quiet_s)
                if load > self.settings.max_other_load:
                    _log(f"{pair.name}: {name}: machine still busy ({load:.2f} cores) after {self.settings.wait_quiet_s:.0f} s; running anyway")
            return run()

        records = []
        repeat = self.settings.repeat if pair.name == "real" or name in REPEATED_EVERYWHERE else 1
        first_run = name in FIRST_RUNS  # one per home: neither repeated nor retried
        for _ in range(1 if first_run or once else repeat):
            _log(f"{pair.name}: {name}")
            record = quiet_run()
            for _ in range(0 if first_run else self.settings.retries):
                if record["other_cpu_cores"] <= self.settings.max_other_load:
                    break
                _log(f"{pair.name}: {name}: other work kept {record['other_cpu_cores']:.2f} cores busy; running it again")
                record = min(record, quiet_run(), key=lambda r: r["other_cpu_cores"])
            _log(f"{pair.name}: {name}: {record['wall_s']:.1f} s, peak RSS {record['peak_rss_mb']:.0f} MB, other load {record['other_cpu_cores']:.2f} cores")
            records.append(record)
        best = min(records, key=lambda r: r["wall_s"])
        return best | {"wall_s_all": [r["wall_s"] for r in records]}


def _record(m: Measured) -> dict:
    result = m.result
    record = {
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss_mb": m.peak_rss_mb,
        "other_cpu_cores": m.other_cpu_cores,
        "server_cpu_s": m.server_cpu_s,
        "facts": result.get("facts", {}),
    }
    if "stages" in result:
        record |= {
            "stages": result["stages"],
            "total_s": sum(result["stages"].values()),
            "imports_s": result["imports_s"],
            "rss_after_imports_mb": result["rss_after_imports_mb"],
        }
    return record


def _log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def measure_pair(bench: Bench, pair: Pair, kind: str) -> dict:
    """Every measurement on one pair; baseline and taxiflow run one after the other.

    `kind`: `real` (everything, and the fixed cost of `taxiflow train` in each way it reaches
    Prefect), `resampled` (everything but the first runs and the old mode) or `end-to-end` (the
    course, taxiflow's functions, and `taxiflow train` with the local server warm).
    """
    course_and_direct: list[tuple[str, Callable[[], dict]]] = [
        ("course", lambda: bench.child("course", pair, full=True)),
        ("taxiflow", lambda: bench.child("taxiflow", pair, full=True)),
    ]
    standard: list[tuple[str, Callable[[], dict]]] = [
        ("course_read_features", lambda: bench.child("course", pair, full=False)),
        ("taxiflow_read_features", lambda: bench.child("taxiflow", pair, full=False)),
        ("decode_floor", lambda: bench.child("decode-floor", pair, full=False)),
        ("train_floor", lambda: bench.child("train-floor", pair, full=False)),
        ("flow_server", lambda: bench.child("flow", pair, full=True, server=True)),
        ("cli_server", lambda: bench.cli(pair, "stack")),
    ]
    first: list[tuple[str, Callable[[], dict]]] = []
    local = [("cli_local", lambda: bench.cli(pair, "local"))]
    if kind == "real":
        # The first `taxiflow train` of all starts the local server and the warm runner every later run
        # (stack up or not, on every pair) uses.
        first = [("cli_local_first", lambda: bench.cli(pair, "local_first"))]
        if not bench.settings.quick:  # the old mode: the baseline of the fixed cost
            local += [("cli_temp_first", lambda: bench.cli(pair, "temp_first")), ("cli_temp", lambda: bench.cli(pair, "temp"))]
    if kind == "end-to-end":  # one run each (no orchestration overhead here, which needed the repeats)
        return {name: bench.measure(name, pair, run, once=True) for name, run in course_and_direct + local}
    return {name: bench.measure(name, pair, run) for name, run in first + course_and_direct + standard + local}


def _fixed(run: dict) -> dict:
    """A `taxiflow train` run's fixed cost: its whole process minus the time its own flow run reported."""
    return {"wall_s": run["wall_s"], "flow_s": run["facts"]["flow_s"], "fixed_s": run["wall_s"] - run["facts"]["flow_s"], "peak_rss_mb": run["peak_rss_mb"]}


def derive(runs: dict[str, dict], local_server: dict | None = None, warm_runner: dict | None = None) -> dict:
    """The issue's target figures from one pair's runs (ratios within the same benchmark run).

    `local_server`, `warm_runner`: their memory after this pair's runs (LocalPrefect.memory).
    """
    course = runs["course"]
    figures: dict = {}
    if all(name in runs for name in STANDARD):
        figures |= _derive_standard(runs)
    # End to end, as a user runs each: the course's script, and `taxiflow train` with the local server warm.
    cli = runs["cli_local"]
    figures["end_to_end"] = {
        "course_process_s": course["wall_s"],
        "taxiflow_process_s": cli["wall_s"],
        "course_over_taxiflow": course["wall_s"] / cli["wall_s"],
        "taxiflow_fixed_s": cli["facts"]["fixed_s"],
        "course_rmse": course["facts"]["rmse"],
        "taxiflow_rmse": cli["facts"]["rmse"],
        "rmse_diff": cli["facts"]["rmse"] - course["facts"]["rmse"],
        "course_peak_rss_mb": course["peak_rss_mb"],
        "taxiflow_peak_rss_mb": cli["peak_rss_mb"],
        "taxiflow_over_course_peak_rss": cli["peak_rss_mb"] / course["peak_rss_mb"],
        # Not in the run's peak RSS (another session): its processes' peaks so far, summed.
        "local_server_peak_rss_mb": local_server["peak_rss_mb"] if local_server else None,
        "local_server_rss_mb": local_server["rss_mb"] if local_server else None,
        # The warm runner between runs (its runs' peaks are in taxiflow_peak_rss_mb: they inherit its memory).
        "warm_runner_peak_rss_mb": warm_runner["peak_rss_mb"] if warm_runner else None,
        "warm_runner_rss_mb": warm_runner["rss_mb"] if warm_runner else None,
    }
    modes = {"stack": "cli_server", "local": "cli_local", "local_first": "cli_local_first", "temp": "cli_temp", "temp_first": "cli_temp_first"}
    fixed = {mode: _fixed(runs[name]) for mode, name in modes.items() if name in runs}
    if "temp" in fixed:
        # The old mode (a temporary server inside each run) over the new (the local server), in this run.
        fixed["temp_over_local"] = fixed["temp"]["fixed_s"] / fixed["local"]["fixed_s"]
        fixed["temp_first_over_local_first"] = fixed["temp_first"]["fixed_s"] / fixed["local_first"]["fixed_s"]
    figures["fixed_cost"] = fixed
    figures["rmse"] = {name: run["facts"]["rmse"] for name, run in runs.items() if "rmse" in run["facts"]}
    rmses = figures["rmse"].values()
    figures["rmse"]["max_abs_diff"] = max(rmses) - min(rmses)
    return figures


def _derive_standard(runs: dict[str, dict]) -> dict:
    course, taxiflow, flow = runs["course"], runs["taxiflow"], runs["flow_server"]
    rf_course, rf_taxiflow, floor = runs["course_read_features"], runs["taxiflow_read_features"], runs["decode_floor"]
    train_floor = runs["train_floor"]["stages"]
    return {
        "read_to_features": {
            "course_s": rf_course["total_s"],
            "taxiflow_s": rf_taxiflow["total_s"],
            "decode_floor_s": floor["total_s"],
            "course_over_taxiflow": rf_course["total_s"] / rf_taxiflow["total_s"],
            "taxiflow_over_decode_floor": rf_taxiflow["total_s"] / floor["total_s"],
            "course_peak_rss_mb": rf_course["peak_rss_mb"],
            "taxiflow_peak_rss_mb": rf_taxiflow["peak_rss_mb"],
            "decode_floor_peak_rss_mb": floor["peak_rss_mb"],
        },
        "training": {
            "course_train_s": course["stages"]["train"],
            "taxiflow_train_s": taxiflow["stages"]["train"],
            "xgboost_all_rows_s": train_floor["dmatrix_all_rows"] + train_floor["boost_all_rows"],
            "xgboost_fit_rows_s": train_floor["dmatrix_fit_rows"] + train_floor["boost_fit_rows"],
            "rows_fit": taxiflow["facts"]["rows_fit"],
            "rows_train": taxiflow["facts"]["rows_train"],
        },
        "time_to_model": {
            "course_s": course["total_s"],
            "taxiflow_s": taxiflow["total_s"],
            "course_over_taxiflow": course["total_s"] / taxiflow["total_s"],
            # Resampled months repeat each real row many times, so collapsing them shrinks training
            # far more than a real month allows: this is taxiflow's time with no duplicates at all.
            "taxiflow_no_duplicates_s": taxiflow["total_s"] - taxiflow["stages"]["train"] + train_floor["dmatrix_all_rows"] + train_floor["boost_all_rows"],
            "course_process_s": course["wall_s"],
            "taxiflow_cli_process_s": runs["cli_server"]["wall_s"],
            "course_over_taxiflow_cli": course["wall_s"] / runs["cli_server"]["wall_s"],
        },
        "orchestration": {
            "direct_s": taxiflow["total_s"],
            "flow_s": flow["stages"]["flow"],
            "overhead_s": flow["stages"]["flow"] - taxiflow["total_s"],
            # The same, each side less its own XGBoost fit (direct: the train stage; flow: the fit
            # task, timed by the flow): what Prefect adds, without XGBoost's run-to-run variance.
            "direct_without_fit_s": taxiflow["total_s"] - taxiflow["stages"]["train"],
            "flow_without_fit_s": flow["stages"]["flow"] - flow["facts"]["fit_s"],
            "overhead_without_fit_s": (flow["stages"]["flow"] - flow["facts"]["fit_s"]) - (taxiflow["total_s"] - taxiflow["stages"]["train"]),
            "overhead_share": ((flow["stages"]["flow"] - flow["facts"]["fit_s"]) - (taxiflow["total_s"] - taxiflow["stages"]["train"])) / taxiflow["total_s"],
            # What one more run of the same thing can differ by (XGBoost's timing varies run to run).
            "run_to_run_spread_s": max(max(r["wall_s_all"]) - min(r["wall_s_all"]) for r in (taxiflow, flow)) if len(taxiflow["wall_s_all"]) > 1 else None,
        },
        "memory": {
            "course_peak_rss_mb": course["peak_rss_mb"],
            "taxiflow_direct_peak_rss_mb": taxiflow["peak_rss_mb"],
            "taxiflow_cli_peak_rss_mb": runs["cli_server"]["peak_rss_mb"],
            "course_over_taxiflow_cli": course["peak_rss_mb"] / runs["cli_server"]["peak_rss_mb"],
        },
    }


def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    versions = {name: metadata.version(name) for name in ("taxiflow", "xgboost-cpu", "scikit-learn", "pandas", "polars", "pyarrow", "mlflow", "prefect")}
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(int(meminfo[1]) / 1024**2, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "versions": versions,
    }


@contextmanager
def stack_server(settings: Settings, scratch: Path) -> Iterator[StackServer]:
    """The given server, or one started for this run (PREFECT_HOME in the scratch directory)."""
    if settings.prefect_api:
        yield StackServer(settings.prefect_api, None)
        return
    home = scratch / "prefect-server-home"
    home.mkdir()
    port = free_port()
    env = base_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running_process(cmd, f"http://127.0.0.1:{port}/api/health", home / "prefect-server.log", env) as process:
        yield StackServer(f"http://127.0.0.1:{port}/api", process.pid)  # its own session: sid == pid


@contextmanager
def local_prefect(scratch: Path) -> Iterator[LocalPrefect]:
    """This run's state directory and PREFECT_HOME for `taxiflow train` without PREFECT_API_URL; the local server is stopped at the end."""
    local = LocalPrefect(scratch / "local-state", scratch / "local-prefect-home")
    try:
        yield local
    finally:
        service, runner = local.service(), local.runner_service()
        output = local.stop()
        sessions = [s["sid"] for s in (service, runner) if s]

        def still_there() -> list[int]:
            return [pid for sid in sessions for pid in session_pids(sid)]

        left = still_there()
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:  # stopped processes are reaped by init
            time.sleep(0.2)
            left = still_there()
        local.shutdown = {
            "server_pid": service["pid"] if service else None,
            "runner_pid": runner["pid"] if runner else None,
            "stack_down_output": output,
            "processes_left": left,
        }
        _log(f"taxiflow stack down: {output}" + (f" (processes left: {left})" if left else ""))


def make_store_template(path: Path) -> Path:
    """An empty MLflow SQLite store (schema only), made once per benchmark run in a child process."""
    code = (
        "import sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
        "c.search_experiments(max_results=1); c.search_registered_models(max_results=1)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], env=base_env(), check=True, capture_output=True)
    return path


def run(settings: Settings, out_dir: Path) -> dict:
    results: dict = {
        "generated_at": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "quick": settings.quick,
            "num_boost_round": settings.num_boost_round or 100,
            "repeat_real_pair": settings.repeat,
            "retries": settings.retries,
            "max_other_load": settings.max_other_load,
            "wait_quiet_s": settings.wait_quiet_s,
            "large_pair_rows": list(settings.large),
            "scaling_train_rows": list(settings.scaling_train_rows),
        },
        "pairs": {},
        "scaling": [],
    }
    pairs = [(real_pair(), "real")]
    if not settings.quick:
        _log("resampling the large pairs and the scaling months (kept between runs)")
        # In child processes: a child's peak RSS starts at its parent's, so this runner must never
        # hold a resampled month itself (once the files exist, resampled_pair only links them).
        rows_val = ["--val-rows", str(settings.large[1])]
        commands = [["--train-rows", str(rows), *rows_val] for rows in {*settings.scaling_train_rows, settings.large[0]}]
        commands.append(["--train-rows", str(settings.large[0]), *rows_val, "--non-repeating"])
        for args in commands:
            subprocess.run([sys.executable, "-m", "benchmarks.make_data", *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        pairs.append((resampled_pair(*settings.large, name="large"), "resampled"))
        pairs.append((resampled_pair(*settings.large, name="nonrep", non_repeating_rows=True), "end-to-end"))
        scaling_pairs = [resampled_pair(rows, settings.large[1]) for rows in settings.scaling_train_rows]
    with (
        tempfile.TemporaryDirectory(prefix="taxiflow-bench-") as tmp,
        stack_server(settings, Path(tmp)) as stack,
        local_prefect(Path(tmp)) as local,
    ):
        template = make_store_template(Path(tmp) / "mlflow-template" / "mlflow.db")
        bench = Bench(settings, Path(tmp) / "runs", stack, local, template)
        for pair, kind in pairs:
            runs = measure_pair(bench, pair, kind)
            memory, runner = local.memory(), local.memory(local.runner_service())
            results["pairs"][pair.name] = {
                "train_file": str(pair.train),
                "val_file": str(pair.val),
                "rows_read": list(_rows_read(pair)),
                "runs": runs,
                "local_server": memory,
                "warm_runner": runner,
                "figures": derive(runs, memory, runner),
            }
        if settings.scaling_train_rows:
            large_run = results["pairs"]["large"]["runs"]["taxiflow"]
            for rows, pair in zip(settings.scaling_train_rows, scaling_pairs, strict=True):
                record = large_run if rows == settings.large[0] else bench.measure("taxiflow", pair, partial(bench.child, "taxiflow", pair, full=True))
                results["scaling"].append({"train_rows_read": rows} | record)
        results["local_server"] = local.memory()
        results["warm_runner"] = local.memory(local.runner_service())
    # Stopped by now (local_prefect's exit): recorded so the smoke test can check it.
    results["local_server_shutdown"] = local.shutdown
    write_outputs(results, out_dir)
    return results


def _rows_read(pair: Pair) -> tuple[int, int]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(pair.train).metadata.num_rows, pq.ParquetFile(pair.val).metadata.num_rows


def write_outputs(results: dict, out_dir: Path) -> None:
    from benchmarks import report

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(report.markdown(results))
    report.plot_stages(results, out_dir / "stages.png")
    if results["scaling"]:
        report.plot_scaling(results, out_dir / "scaling.png")
    _log(f"wrote {out_dir}/results.json, results.md and plots")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"real pair only, {QUICK_ROUNDS} boosting round(s), one run each, no retries, no scaling, no run of the old temporary-server mode",
    )
    parser.add_argument("--num-boost-round", type=int, help="override the course's 100 rounds (both pipelines)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement on the real pair; the fastest is kept")
    parser.add_argument("--retries", type=int, default=2, help="extra runs of a measurement disturbed by other work on the machine")
    parser.add_argument("--max-other-load", type=float, default=0.3, help="cores busy with other work above which a run is disturbed")
    parser.add_argument("--wait-quiet", type=float, default=300, help="seconds to wait, before each run, for a busy machine to fall quiet")
    parser.add_argument(
        "--scaling", action="store_true", help=f"add taxiflow's scaling curve ({', '.join(map(str, SCALING_TRAIN_ROWS))} training rows; +~5 min)"
    )
    parser.add_argument("--scaling-train-rows", help="comma list of training-month sizes for the scaling curve (implies --scaling)")
    parser.add_argument("--prefect-api", help="use this running Prefect server (…/api) instead of starting one")
    parser.add_argument(
        "--out", type=Path, help=f"default {OUT_DIR.relative_to(REPO)} ({OUT_DIR.relative_to(REPO)}/quick with --quick, so a full run's results stay)"
    )
    args = parser.parse_args(argv)
    settings = Settings(
        quick=args.quick,
        num_boost_round=args.num_boost_round or (QUICK_ROUNDS if args.quick else None),
        repeat=1 if args.quick else args.repeat,
        retries=0 if args.quick else args.retries,
        max_other_load=args.max_other_load,
        wait_quiet_s=0 if args.quick else args.wait_quiet,
        large=LARGE,
        scaling_train_rows=()
        if args.quick
        else tuple(int(v) for v in args.scaling_train_rows.split(","))
        if args.scaling_train_rows
        else SCALING_TRAIN_ROWS
        if args.scaling
        else (),
        prefect_api=args.prefect_api,
    )
    if shutil.which("taxiflow", path=str(VENV_BIN)) is None:
        parser.error(f"no `taxiflow` command in {VENV_BIN}: run with the project's .venv/bin/python")
    # SIGTERM unwinds like Ctrl-C, so the Prefect server and the running child are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run(settings, args.out or (OUT_DIR / "quick" if args.quick else OUT_DIR))


if __name__ == "__main__":
    main()
