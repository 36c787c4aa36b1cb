"""Batch scoring of a 3.4M-row month against its floor: reading the month and predicting with the booster alone.

    .venv/bin/python -m benchmarks.scoring            # ~6 min on 2 cores: both 3.4M-row months
    .venv/bin/python -m benchmarks.scoring --quick    # 50k rows, 2 boosting rounds, one month: the machinery only

The model: `taxiflow train` on the real green 2023-01 -> 2023-02 (XGBoost, the course's parameters),
registered in an MLflow SQLite store of this run, with a Prefect server this run starts (or
`--prefect-api`). The month: 3.4M rows of the real green 2023-03 drawn with replacement
(`make_data.resample`, as the training benchmark's months), and the same rows with each distance
scaled by U(0.8, 1.2) (`--non-repeating`'s transform: real months of that size repeat far less).

Measured, each in a fresh child process (imports and model loading before the clock; wall time and
peak RSS from outside, as benchmarks/run.py does):
- **floor**: `pyarrow.parquet.read_table` of the three model inputs, the one-hot matrix
  (`build_feature_matrix`, the only feature code there is), `booster.predict` on every row;
- **scoring job**: what the `score` flow does without Prefect and MLflow: `jobs.scoring.score_trip_file`
  (row groups streamed, contracts, actual durations, each distinct input scored once, the parquet
  file written and published atomically, drift counts), the reference month profiled the same way,
  the drift report;
- **`taxiflow score`**: the whole command as a user runs it (`--json`), against the same store.

The job's predictions are checked against the floor's, row for row. Results: benchmarks/out/scoring/
(results.json, results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.make_data import _link, non_repeating, resample
from benchmarks.measure import StageTimer, current_rss_mb, peak_rss_mb, run_measured, wait_for_quiet
from benchmarks.pairs import DATA_DIR, REPO, shared_tlc_dir, tlc_name
from tests.support.servers import VENV_BIN, base_env, free_port, running_process

OUT_DIR = REPO / "benchmarks" / "out" / "scoring"
ROWS = 3_400_000
QUICK_ROWS = 50_000
MONTH, REFERENCE_MONTH, VAL_MONTH = "2023-03", "2023-01", "2023-02"
MODEL_NAME = "nyc-taxi-duration"
INPUTS = ["PULocationID", "DOLocationID", "trip_distance"]
TARGET_RATIO = 2.0


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- what the children run -----------------------------------------------------------------------


def floor(month: Path, bundle: Path, predictions_out: Path | None = None) -> tuple[StageTimer, dict[str, object]]:
    """Read the model's three input columns, build the one-hot matrix, `booster.predict` every row."""
    import polars as pl
    import pyarrow.parquet as pq
    import xgboost as xgb

    from taxiflow.core.features import build_feature_matrix
    from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, PICKUP_ZONE
    from taxiflow.core.training import XGBoostModel
    from taxiflow.io.model_bundle import load_model_bundle

    model, vocabulary = load_model_bundle(bundle)
    if not isinstance(model, XGBoostModel):
        raise TypeError(f"{bundle}: the floor is XGBoost's booster, got a {model.kind} model")
    timer = StageTimer()
    with timer.stage("read"):
        table = pq.read_table(month, columns=INPUTS)
    with timer.stage("features"):
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        rides = frame.select(
            pl.col("PULocationID").cast(pl.Int32).alias(PICKUP_ZONE),
            pl.col("DOLocationID").cast(pl.Int32).alias(DROPOFF_ZONE),
            pl.col("trip_distance").cast(pl.Float64).alias(DISTANCE),
        )
        X = build_feature_matrix(rides, vocabulary).X
    with timer.stage("predict"):
        predictions = model.booster.predict(xgb.DMatrix(X))
    if predictions_out is not None:
        np.save(predictions_out, predictions)
    return timer, {"rows": int(predictions.size), "mean_prediction": float(predictions.mean())}


def scoring_job(month: Path, reference: Path, bundle: Path, out_dir: Path) -> tuple[StageTimer, dict[str, object]]:
    """The `score` flow's work without Prefect or MLflow: stream, score, write atomically, check drift."""
    from taxiflow.core.drift import compare_profiles
    from taxiflow.io.model_bundle import load_model_bundle
    from taxiflow.io.predictions import LocalPredictionSink, predictions_key
    from taxiflow.jobs.scoring import ScoringModel, score_trip_file

    model, vocabulary = load_model_bundle(bundle)
    scoring = ScoringModel(MODEL_NAME, "1", {}, model, vocabulary)
    timer = StageTimer()
    with timer.stage("score"):
        sink = LocalPredictionSink(out_dir / predictions_key("green", MONTH, "1"), "1")
        try:
            scored = score_trip_file(str(month), "green", scoring, sink=sink)
            location = sink.commit()
        finally:
            sink.abort()
    with timer.stage("reference"):
        profile = score_trip_file(str(reference), "green", scoring, sink=None)
    with timer.stage("drift"):
        report = compare_profiles(profile.profile, scored.profile, reference_label=REFERENCE_MONTH, current_label=MONTH)
    metrics = scored.metrics
    facts: dict[str, object] = {
        "rows": scored.rows_scored,
        "rows_read": scored.rows_read,
        "batches": scored.batches,
        "rows_with_actuals": scored.rows_with_actuals,
        "rmse": metrics.rmse if metrics else None,
        "output": location,
        "score_seconds": scored.seconds,
        "distinct_predictions": int(scored.profile.get("prediction").values.size),
        "inputs_predicted": scored.inputs_predicted,
        "drift": {c.column: round(c.score, 6) for c in report.columns},
    }
    return timer, facts


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.scoring child")
    parser.add_argument("kind", choices=("floor", "job"))
    parser.add_argument("--month", type=Path, required=True)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # Imports first (outside the clock), as benchmarks/child.py does.
    import polars  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import xgboost  # noqa: F401

    import taxiflow.core.drift
    import taxiflow.jobs.scoring  # noqa: F401

    imports_s, rss_ready = time.perf_counter() - start, current_rss_mb()
    if args.kind == "floor":
        timer, facts = floor(args.month, args.bundle, args.out / "floor.npy")
    else:
        timer, facts = scoring_job(args.month, args.reference, args.bundle, args.out)
    args.result.write_text(
        json.dumps({"stages": timer.seconds, "facts": facts, "imports_s": imports_s, "rss_after_imports_mb": rss_ready, "peak_rss_self_mb": peak_rss_mb()})
    )


# --- the parent: data, model, measurements, report ---------------------------------------------


def scoring_month(rows: int, *, non_repeating_rows: bool) -> Path:
    """A data directory holding `rows` rides resampled from green 2023-03 (TLC-named) and the real reference month."""
    source = shared_tlc_dir()
    sample = resample(source / tlc_name(MONTH), rows, DATA_DIR / "samples" / f"green_tripdata_{MONTH}-{rows}.parquet")
    if non_repeating_rows:
        sample = non_repeating(sample, DATA_DIR / "samples" / f"green_tripdata_{MONTH}-{rows}-nonrep.parquet")
    directory = DATA_DIR / "scoring" / f"{rows}{'-nonrep' if non_repeating_rows else ''}"
    _link(sample, directory / tlc_name(MONTH))
    _link(source / tlc_name(REFERENCE_MONTH), directory / tlc_name(REFERENCE_MONTH))
    return directory


@contextmanager
def prefect_api(given: str | None, scratch: Path) -> Iterator[str]:
    if given:
        yield given
        return
    home = scratch / "prefect-home"
    home.mkdir()
    port = free_port()
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running_process(cmd, f"http://127.0.0.1:{port}/api/health", home / "prefect-server.log", base_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")):
        yield f"http://127.0.0.1:{port}/api"


def train_model(env: dict[str, str], scratch: Path, rounds: int | None) -> tuple[str, Path]:
    """`taxiflow train` on the real pair into this run's store; returns the store's URI and the model's files."""
    import subprocess

    store = f"sqlite:///{scratch / 'mlflow.db'}"
    cmd = [str(VENV_BIN / "taxiflow"), "train", "--train-month", REFERENCE_MONTH, "--val-month", VAL_MONTH, "--data-dir", str(shared_tlc_dir())]
    cmd += ["--tracking-uri", store, "--json"] + (["--num-boost-round", str(rounds)] if rounds else [])
    proc = subprocess.run(cmd, env=env, cwd=scratch, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"taxiflow train failed ({proc.returncode}): {proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    _log(f"trained {MODEL_NAME} v{summary['model_version']}: RMSE {summary['rmse']:.4f} on {VAL_MONTH}")

    import mlflow

    from taxiflow.io.registry import ModelRegistry
    from taxiflow.io.tracking import TrackingStore

    registry = ModelRegistry(TrackingStore(store, "nyc-taxi-experiment"), MODEL_NAME)
    uri = registry.client.get_model_version_download_uri(MODEL_NAME, summary["model_version"])
    bundle = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/artifacts/bundle", dst_path=str(scratch / "model"), tracking_uri=store))
    return store, bundle


def _measured_child(kind: str, work: Path, month_dir: Path, bundle: Path, env: dict[str, str]) -> dict:
    work.mkdir(parents=True)
    cmd = [sys.executable, "-m", "benchmarks.scoring", "child", kind, "--month", str(month_dir / tlc_name(MONTH)), "--bundle", str(bundle)]
    cmd += ["--reference", str(month_dir / tlc_name(REFERENCE_MONTH)), "--out", str(work), "--result", str(work / "result.json")]
    m = run_measured(cmd, env=env, cwd=work, result_file=work / "result.json")
    stages = m.result["stages"]
    return {
        "wall_s": m.wall_s,
        "work_s": sum(stages.values()),  # the clocked part: imports and model loading excluded
        "stages": stages,
        "peak_rss_mb": m.peak_rss_mb,
        "rss_after_imports_mb": m.result["rss_after_imports_mb"],
        "other_cpu_cores": m.other_cpu_cores,
        "facts": m.result["facts"],
        "work": str(work),
    }


def _measured_cli(work: Path, month_dir: Path, store: str, env: dict[str, str]) -> dict:
    work.mkdir(parents=True)
    cmd = [str(VENV_BIN / "taxiflow"), "score", "--month", MONTH, "--data-dir", str(month_dir), "--source", "local", "--tracking-uri", store]
    cmd += ["--output", str(work / "out"), "--json"]
    m = run_measured(cmd, env=env, cwd=work)
    summary = json.loads(m.stdout.strip().splitlines()[-1])
    return {
        "wall_s": m.wall_s,
        "flow_s": summary["seconds"]["flow"],
        "peak_rss_mb": m.peak_rss_mb,
        "other_cpu_cores": m.other_cpu_cores,
        "facts": {k: summary[k] for k in ("rows_scored", "rows_with_actuals", "rmse", "output")} | {"dataset_drift": summary["drift"].get("dataset_drift")},
    }


def measure_month(name: str, month_dir: Path, bundle: Path, store: str, env: dict[str, str], scratch: Path, repeat: int, wait_quiet_s: float) -> dict:
    """Floor and job interleaved `repeat` times (the fastest of each kept), then the command once.

    Before each run, up to `wait_quiet_s` for the (shared, 2-core) machine to fall quiet.
    """
    runs: dict[str, list[dict]] = {"floor": [], "job": []}
    for i in range(repeat):
        for kind in ("floor", "job"):
            if wait_quiet_s > 0:
                wait_for_quiet(0.3, wait_quiet_s)
            record = _measured_child(kind, scratch / f"{name}-{kind}-{i}", month_dir, bundle, env)
            _log(f"{name}: {kind}: {record['work_s']:.2f} s ({record['wall_s']:.2f} s wall), peak RSS {record['peak_rss_mb']:.0f} MB")
            runs[kind].append(record)
    floor_run, job = (min(runs[k], key=lambda r: r["work_s"]) for k in ("floor", "job"))
    floor_predictions = np.load(Path(floor_run["work"]) / "floor.npy")
    import pyarrow.parquet as pq

    written = pq.read_table(job["facts"]["output"])
    order = np.argsort(written.column("ride_index").to_numpy())
    job_predictions = written.column("prediction").to_numpy()[order]
    identical = bool(floor_predictions.size == job_predictions.size and np.array_equal(floor_predictions.astype(np.float64), job_predictions))
    max_diff = float(np.max(np.abs(floor_predictions.astype(np.float64) - job_predictions))) if floor_predictions.size == job_predictions.size else None
    if wait_quiet_s > 0:
        wait_for_quiet(0.3, wait_quiet_s)
    cli = _measured_cli(scratch / f"{name}-cli", month_dir, store, env)
    _log(f"{name}: taxiflow score: {cli['wall_s']:.2f} s wall (flow {cli['flow_s']:.2f} s), peak RSS {cli['peak_rss_mb']:.0f} MB")
    return {
        "floor": floor_run,
        "job": job,
        "cli": cli,
        "all_work_s": {k: [r["work_s"] for r in v] for k, v in runs.items()},
        "predictions_identical": identical,
        "predictions_max_abs_diff": max_diff,
        "figures": {
            "job_over_floor": job["work_s"] / floor_run["work_s"],
            "job_score_only_over_floor": job["stages"]["score"] / floor_run["work_s"],
            "cli_flow_over_floor": cli["flow_s"] / floor_run["work_s"],
            "cli_wall_over_floor_wall": cli["wall_s"] / floor_run["wall_s"],
            "job_peak_rss_over_floor": job["peak_rss_mb"] / floor_run["peak_rss_mb"],
        },
    }


def report(results: dict) -> str:
    lines = [
        "# Batch scoring vs its floor",
        "",
        f"{results['rows']:,}-row month (green {MONTH} resampled), model: XGBoost trained on green {REFERENCE_MONTH} "
        f"(target: the job in at most {TARGET_RATIO:g}x the floor's time). "
        "Floor = read the 3 input columns + one-hot matrix + `booster.predict` on every row.",
        "",
        "| month | floor (s) | scoring job (s) | job / floor | of which scoring the file (s) | `taxiflow score` wall / its flow (s) "
        "| peak RSS floor / job / command (MB) | same predictions |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in results["months"].items():
        f, j, c = m["floor"], m["job"], m["cli"]
        lines.append(
            f"| {name} | {f['work_s']:.2f} | {j['work_s']:.2f} | **{m['figures']['job_over_floor']:.2f}x** | {j['stages']['score']:.2f} "
            f"| {c['wall_s']:.2f} / {c['flow_s']:.2f} | {f['peak_rss_mb']:.0f} / {j['peak_rss_mb']:.0f} / {c['peak_rss_mb']:.0f} "
            f"| {'yes' if m['predictions_identical'] else 'max diff ' + format(m['predictions_max_abs_diff'], '.3g')} |"
        )
    lines += ["", "Stages (seconds):", ""]
    for name, m in results["months"].items():
        floor_stages = ", ".join(f"{k} {v:.2f}" for k, v in m["floor"]["stages"].items())
        job_stages = ", ".join(f"{k} {v:.2f}" for k, v in m["job"]["stages"].items())
        inner = ", ".join(f"{k} {v:.2f}" for k, v in m["job"]["facts"]["score_seconds"].items())
        predicted = m["job"]["facts"]["inputs_predicted"]
        lines.append(f"- {name}: floor: {floor_stages}; job: {job_stages} (scoring the file: {inner}); {predicted:,} distinct inputs predicted")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        _child(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, 2 boosting rounds, the resampled month only, once")
    parser.add_argument("--rows", type=int, help=f"rows of the scored month (default {ROWS:,})")
    parser.add_argument("--repeat", type=int, default=2, help="floor and job runs per month, interleaved (the fastest kept)")
    parser.add_argument("--prefect-api", help="a running Prefect server's API URL (default: start one)")
    parser.add_argument("--wait-quiet-s", type=float, help="before each run, wait up to this long for the machine to fall quiet (default 60; --quick: 0)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    months = {"resampled": False} if args.quick else {"resampled": False, "non-repeating": True}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taxiflow-bench-scoring-") as tmp:
        scratch = Path(tmp)
        with prefect_api(args.prefect_api, scratch) as api:
            env = base_env(TAXIFLOW_STATE_DIR=str(scratch / "state"), PREFECT_API_URL=api)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            store, bundle = train_model(env, scratch, 2 if args.quick else None)
            results: dict = {"rows": rows, "quick": args.quick, "months": {}}
            for name, jitter in months.items():
                month_dir = scoring_month(rows, non_repeating_rows=jitter)
                wait = args.wait_quiet_s if args.wait_quiet_s is not None else (0.0 if args.quick else 60.0)
                results["months"][name] = measure_month(name, month_dir, bundle, store, env, scratch, 1 if args.quick else args.repeat, wait)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
