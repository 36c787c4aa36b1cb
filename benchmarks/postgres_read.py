"""Reading one month of trips from PostgreSQL vs from its parquet file: the same rows, both ways.

    .venv/bin/python -m benchmarks.postgres_read            # ~2 min: the real month and two 3.4M-row months
    .venv/bin/python -m benchmarks.postgres_read --quick    # the real month only, 3 runs: the machinery

Measured, interleaved run by run in this process, the median of `--runs` kept for each:
- **parquet**: `read_trip_table` of the five canonical columns from the TLC-named file (what a run
  reading the data directory does);
- **PostgreSQL**: `trips_sql.read_month` of the same columns after `load_month` of that file: a new
  connection (password authentication), the month's load record and its rows from one snapshot
  (COPY, binary, into Arrow), rows checked and put in file order. The same rows come back (checked).

Months, each loaded as green 2023-01 (one replacing the other): the real green 2023-01 (68,211 rows),
3.4M rows resampled from it (`make_data.resample`, as the training benchmark's large month), and the
same rows with jittered distances (`make_data.non_repeating`: parquet's dictionary pages compress the
resampled month's repeats far better than a real month's). PostgreSQL is a scratch cluster this
benchmark starts on 127.0.0.1 (`platform.postgres.scratch_postgres`), data in its buffers and the OS
page cache, as the parquet file is. Target (issue 15): PostgreSQL within 5x of parquet.
Results: benchmarks/out/postgres/ (results.json, results.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from benchmarks.make_data import non_repeating, resample
from benchmarks.measure import machine_load, wait_for_quiet
from benchmarks.pairs import DATA_DIR, REPO, TRAIN_MONTH, shared_tlc_dir, tlc_name
from taxiflow.core.schema import CANONICAL_FIELDS, layout_for
from taxiflow.io.month_cache import file_sha256
from taxiflow.io.trip_tables import read_trip_table
from taxiflow.io.trips_sql import load_month, read_month
from taxiflow.platform.postgres import scratch_postgres

OUT_DIR = REPO / "benchmarks" / "out" / "postgres"
ROWS = 3_400_000
TARGET_RATIO = 5.0
TAXI = "green"
COLUMNS = list(CANONICAL_FIELDS)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def months(quick: bool, rows: int) -> dict[str, Path]:
    """The parquet files measured, by name; the large ones are written once under benchmarks/data/samples/."""
    real = shared_tlc_dir() / tlc_name(TRAIN_MONTH)
    if quick:
        return {"real": real}
    sample = resample(real, rows, DATA_DIR / "samples" / f"{real.stem}-{rows}.parquet")
    return {"real": real, "resampled": sample, "non-repeating": non_repeating(sample, DATA_DIR / "samples" / f"{real.stem}-{rows}-nonrep.parquet")}


def _timed(read: Callable[[], pa.Table]) -> tuple[float, pa.Table]:
    started = time.perf_counter()
    table = read()
    return time.perf_counter() - started, table


def measure_month(url: str, path: Path, runs: int) -> dict:
    """Load `path` as the month, then time both reads `runs` times, alternating which goes first."""
    layout = layout_for(TAXI)
    table = read_trip_table(str(path), layout, COLUMNS)
    load_s, load = _timed(lambda: load_month(url, TAXI, TRAIN_MONTH, table, source_sha256=file_sha256(path), source_origin=str(path)))
    _log(f"{path.name}: {table.num_rows:,} rows loaded in {load_s:.1f} s")

    def from_parquet() -> pa.Table:
        return read_trip_table(str(path), layout, COLUMNS)

    def from_postgres() -> pa.Table:
        rows, read_load = read_month(url, TAXI, TRAIN_MONTH, COLUMNS)
        if read_load.load_id != load.load_id:
            raise RuntimeError(f"read load {read_load.load_id}, expected {load.load_id}")
        return rows

    seconds: dict[str, list[float]] = {"parquet": [], "postgres": []}
    same_rows = True
    for run in range(runs):
        order = (("parquet", from_parquet), ("postgres", from_postgres))
        for name, read in order if run % 2 == 0 else order[::-1]:
            elapsed, got = _timed(read)
            seconds[name].append(elapsed)
            if name == "postgres" and run == 0:
                same_rows = got.equals(table.cast(got.schema))
    parquet_s, postgres_s = statistics.median(seconds["parquet"]), statistics.median(seconds["postgres"])
    return {
        "file": str(path),
        "rows": table.num_rows,
        "load_s": load_s,
        "seconds": seconds,
        "parquet_median_s": parquet_s,
        "postgres_median_s": postgres_s,
        "postgres_over_parquet": postgres_s / parquet_s,
        "postgres_rows_per_s": table.num_rows / postgres_s,
        "within_target": postgres_s / parquet_s <= TARGET_RATIO,
        "same_rows": same_rows,
    }


def report(results: dict) -> str:
    lines = [
        "# Reading a month: PostgreSQL vs parquet",
        "",
        f"Median of {results['runs']} interleaved runs each; the five canonical columns of green {TRAIN_MONTH} "
        f"(target: PostgreSQL within {TARGET_RATIO:g}x of parquet). Machine load before each month: "
        + ", ".join(f"{name} {m['load_before']:.1f}" for name, m in results["months"].items())
        + " cores busy.",
        "",
        "| month | rows | parquet (s) | PostgreSQL (s) | PostgreSQL / parquet | PostgreSQL rows/s | load (s) | same rows |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in results["months"].items():
        verdict = "" if m["within_target"] else " (over target)"
        lines.append(
            f"| {name} | {m['rows']:,} | {m['parquet_median_s']:.3f} | {m['postgres_median_s']:.3f} | **{m['postgres_over_parquet']:.1f}x**{verdict} "
            f"| {m['postgres_rows_per_s'] / 1e6:.2f}M | {m['load_s']:.1f} | {'yes' if m['same_rows'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the real month only, 3 runs unless --runs")
    parser.add_argument("--runs", type=int, help="runs of each read per month (default 9; --quick: 3)")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows of the resampled months (default {ROWS:,})")
    parser.add_argument("--wait-quiet-s", type=float, help="before each month, wait up to this long for the machine to fall quiet (default 60; --quick: 0)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 9)
    wait = args.wait_quiet_s if args.wait_quiet_s is not None else (0.0 if args.quick else 60.0)
    started = time.perf_counter()
    results: dict = {"runs": runs, "quick": args.quick, "target_ratio": TARGET_RATIO, "months": {}}
    files = months(args.quick, args.rows)
    with scratch_postgres() as server:
        _log(f"PostgreSQL on {server.host}:{server.port}")
        for name, path in files.items():
            load_before = wait_for_quiet(1.0, wait) if wait > 0 else machine_load(0.5)  # recorded either way
            results["months"][name] = measure_month(server.url(), path, runs) | {"load_before": load_before}
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
