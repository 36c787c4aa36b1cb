"""`taxiflow train` in one process vs on Dask (a LocalCluster of 2 single-threaded workers), on 1, 3 and 6 training months.

    .venv/bin/python -m benchmarks.dask_training            # ~10-15 min on 2 cores: 1M-row months, the course's 100 rounds
    .venv/bin/python -m benchmarks.dask_training --quick    # ~2 min: 100k-row months, 1 and 2 months, 5 rounds: the machinery only

The months: consecutive months of benchmarks/backfill.py's synthetic calendar (each one real green
month's trips moved by whole months into it), each resampled with replacement to `--rows` rows and
its trip_distance jittered by U(0.8, 1.2) (benchmarks/make_data.py's non-repeating recipe, so
resampled rows do not collapse into a few distinct inputs). Every row is a real trip. Written once
under TLC names into benchmarks/data/dask/ (gitignored).

Measured: the real command, `taxiflow train --train-months A..B --val-month C --retrain --refresh
--json [--engine dask]`, against one Prefect server this run starts, each run in a new state
directory (its own MLflow SQLite store), the months read and prepared in the run (`--refresh`).
Wall time from outside; each process's peak resident memory (VmHWM from /proc, sampled every
0.2 s over the run's session: the command, and with Dask its worker processes); the fit's seconds
and RMSE from the command's JSON. The baseline is the single-process run on the same months, in
this same benchmark run: ratios are Dask / single process.

Results: benchmarks/out/dask/ (results.json, results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.backfill import build_months, months_from, prefect_server
from benchmarks.make_data import ZONE_LOOKUP, _link, jitter_distance
from benchmarks.measure import machine_load, session_memory
from benchmarks.pairs import DATA_DIR, REPO, shared_tlc_dir, tlc_name
from tests.support.servers import VENV_BIN, base_env

OUT_DIR = REPO / "benchmarks" / "out" / "dask"
SEED = 20231101
FIRST = "2022-01"
MARKER = b"taxiflow.benchmark.dask"


@dataclass(frozen=True)
class Plan:
    rows: int
    months: tuple[int, ...]
    num_boost_round: int | None


FULL = Plan(rows=1_000_000, months=(1, 3, 6), num_boost_round=None)
QUICK = Plan(rows=100_000, months=(1, 2), num_boost_round=5)


def resampled_month(source: Path, rows: int, target: Path) -> Path:
    """`rows` rows of `source` drawn with replacement (seeded by its name and the size), trip_distance jittered; kept if written by this recipe."""
    import numpy as np

    recipe = json.dumps({"source": source.name, "rows": rows, "seed": SEED, "jitter": "make_data.jitter_distance"}).encode()
    if target.is_file() and (pq.read_schema(target).metadata or {}).get(MARKER) == recipe:
        return target
    table = pq.read_table(source)
    seed = [SEED, rows, sum(source.name.encode())]
    sample = jitter_distance(table.take(np.random.default_rng(seed).integers(0, table.num_rows, size=rows)), seed)
    sample = sample.replace_schema_metadata((sample.schema.metadata or {}) | {MARKER: recipe})
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    pq.write_table(sample, partial)
    os.replace(partial, target)
    return target


def build_data(plan: Plan) -> Path:
    """max(months) training months and the validation month after them, `plan.rows` rows each."""
    count = max(plan.months) + 1
    synthetic = DATA_DIR / "backfill" / "green"
    build_months(count, synthetic, first=FIRST)
    directory = DATA_DIR / "dask" / f"{plan.rows}"
    for month in months_from(FIRST, count):
        resampled_month(synthetic / tlc_name(month), plan.rows, directory / tlc_name(month))
    if (shared_tlc_dir() / ZONE_LOOKUP).is_file():
        _link(shared_tlc_dir() / ZONE_LOOKUP, directory / ZONE_LOOKUP)
    return directory


class PeakMemory:
    """Each process of a session: its largest VmHWM seen (MB), sampled until stopped."""

    def __init__(self, sid: int, interval_s: float = 0.2) -> None:
        self.sid, self.interval_s = sid, interval_s
        self.peaks: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in session_memory(self.sid):
                seen = self.peaks.setdefault(process["pid"], {"command": process["cmd"][:160], "peak_rss_mb": 0.0})
                seen["peak_rss_mb"] = max(seen["peak_rss_mb"], process["peak_rss_mb"])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run_train(engine: str, months: int, data: Path, api_url: str, plan: Plan, work: Path) -> dict:
    names = months_from(FIRST, months + 1)
    train_months = names[0] if months == 1 else f"{names[0]}..{names[-2]}"
    cmd = [str(VENV_BIN / "taxiflow"), "train", "--taxi", "green", "--train-months", train_months, "--val-month", names[-1]]
    cmd += ["--data-dir", str(data), "--source", "local", "--retrain", "--refresh", "--json", "--engine", engine]
    if plan.num_boost_round:
        cmd += ["--num-boost-round", str(plan.num_boost_round)]
    state = work / f"{engine}-{months}"
    env = base_env(TAXIFLOW_STATE_DIR=str(state), PREFECT_API_URL=api_url)
    state.mkdir(parents=True)
    load_before = machine_load(1.0)
    with open(state / "stderr.log", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=state, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        with PeakMemory(proc.pid) as memory:
            try:
                out, _ = proc.communicate()
            except BaseException:
                # Interrupted: the command is in its own session, with its Dask workers; end them all.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{(state / 'stderr.log').read_text(errors='replace')[-4000:]}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    command = memory.peaks.get(proc.pid, {}).get("peak_rss_mb")
    # Dask's worker processes: spawned by the command, running distributed's worker (the resource tracker is not one).
    workers = [
        p["peak_rss_mb"] for pid, p in memory.peaks.items() if pid != proc.pid and "multiprocessing" in p["command"] and "resource_tracker" not in p["command"]
    ]
    record = {
        "engine": engine,
        "months": months,
        "train_months": train_months,
        "rows_train": summary["rows_train"],
        "rows_train_read": summary["rows_train_read"],
        "rmse": summary["rmse"],
        "wall_s": wall,
        "fit_s": summary["seconds"]["fit"],
        "flow_s": summary["seconds"]["flow"],
        "command_peak_rss_mb": command,
        "worker_peak_rss_mb": sorted(workers, reverse=True),
        "largest_process_mb": max([command or 0.0, *workers]),
        "all_processes_mb": (command or 0.0) + sum(workers),
        "processes": memory.peaks,
        "load_before_cores": load_before,
    }
    print(
        f"  {engine:<5} {months} month(s): {wall:6.1f} s wall, fit {record['fit_s']:6.1f} s, command {command or 0:6.0f} MB, "
        f"workers {', '.join(f'{w:.0f}' for w in workers) or '-'} MB, RMSE {summary['rmse']:.4f}",
        flush=True,
    )
    return record


def derive(runs: list[dict]) -> list[dict]:
    """Per month count: Dask / single process, for time and memory."""
    rows = []
    for months in sorted({r["months"] for r in runs}):
        local = next(r for r in runs if r["months"] == months and r["engine"] == "local")
        dask = next(r for r in runs if r["months"] == months and r["engine"] == "dask")
        rows.append(
            {
                "months": months,
                "rows_train": local["rows_train"],
                "wall_ratio": dask["wall_s"] / local["wall_s"],
                "fit_ratio": dask["fit_s"] / local["fit_s"],
                "largest_process_ratio": dask["largest_process_mb"] / local["largest_process_mb"],
                "command_ratio": dask["command_peak_rss_mb"] / local["command_peak_rss_mb"],
                "all_processes_ratio": dask["all_processes_mb"] / local["all_processes_mb"],
                "rmse_difference": dask["rmse"] - local["rmse"],
            }
        )
    return rows


def report(results: dict) -> str:
    rounds = results["plan"]["num_boost_round"]
    lines = [
        "# Training in one process vs on Dask (2 workers)",
        "",
        f"{results['plan']['rows']:,} rows per month (resampled real trips); "
        f"{f'{rounds} boosting rounds' if rounds else 'the course parameters (100 rounds, early stopping)'}; "
        f"{results['machine']['cpus']} cores. Ratios are Dask / single process (below 1: Dask uses less).",
        "",
        "| months | engine | rows kept | wall s | fit s | command MB | workers MB | largest process MB | all processes MB | RMSE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        workers = ", ".join(f"{w:.0f}" for w in r["worker_peak_rss_mb"]) or "-"
        lines.append(
            f"| {r['months']} | {r['engine']} | {r['rows_train']:,} | {r['wall_s']:.1f} | {r['fit_s']:.1f} | {r['command_peak_rss_mb']:.0f} | {workers} "
            f"| {r['largest_process_mb']:.0f} | {r['all_processes_mb']:.0f} | {r['rmse']:.4f} |"
        )
    lines += ["", "| months | wall | fit | largest process | command | all processes | RMSE difference |", "|---|---|---|---|---|---|---|"]
    for d in results["figures"]:
        lines.append(
            f"| {d['months']} | {d['wall_ratio']:.2f}x | {d['fit_ratio']:.2f}x | {d['largest_process_ratio']:.2f}x | {d['command_ratio']:.2f}x "
            f"| {d['all_processes_ratio']:.2f}x | {d['rmse_difference']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k-row months, 1 and 2 months, 5 rounds: the machinery only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--prefect-api", default=None, help="a Prefect server to use instead of starting one")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (OUT_DIR / "quick" if args.quick else OUT_DIR)
    print(f"building {max(plan.months) + 1} months of {plan.rows:,} rows...", flush=True)
    data = build_data(plan)
    runs = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taxiflow-dask-bench-")))
        server = stack.enter_context(prefect_server(args.prefect_api, scratch))
        for months in plan.months:
            for engine in ("local", "dask"):
                runs.append(run_train(engine, months, data, server.api_url, plan, scratch / "runs"))
                shutil.rmtree(scratch / "runs" / f"{engine}-{months}" / "prepared", ignore_errors=True)
    results = {"plan": plan.__dict__, "machine": {"cpus": os.cpu_count()}, "runs": runs, "figures": derive(runs)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
