"""Entry point of every measured child process: one pipeline (or part of one) per fresh interpreter.

Run as `python -m benchmarks.child KIND ... --result FILE`; the parent measures wall time and peak
RSS from outside, this side records stage times and the RSS once imports are done in FILE (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.measure import StageTimer, current_rss_mb, peak_rss_mb
from benchmarks.pairs import tlc_month

Job = Callable[[], tuple[StageTimer, dict[str, object]]]


# Each kind imports only what it runs (so a stage's RSS carries no unrelated library) and returns
# the job to time.
def _course(args: argparse.Namespace) -> Job:
    from benchmarks import course

    if args.tracking_dir is not None:
        course.import_training_libraries()
    rounds = args.num_boost_round or course.NUM_BOOST_ROUND
    return lambda: course.run(args.train, args.val, tracking_dir=args.tracking_dir, num_boost_round=rounds)


def _taxiflow(args: argparse.Namespace) -> Job:
    from benchmarks import taxiflow_direct

    if args.tracking_dir is not None:
        taxiflow_direct.import_training_libraries()

    return lambda: taxiflow_direct.run(args.train, args.val, tracking_dir=args.tracking_dir, num_boost_round=args.num_boost_round)


def _decode_floor(args: argparse.Namespace) -> Job:
    from benchmarks import floor

    return lambda: floor.decode(args.train, args.val)


def _train_floor(args: argparse.Namespace) -> Job:
    from benchmarks import course, floor

    return lambda: floor.train(args.train, args.val, num_boost_round=args.num_boost_round or course.NUM_BOOST_ROUND)


def _flow(args: argparse.Namespace) -> Job:
    """taxiflow's Prefect flow called in-process; PREFECT_API_URL (or its absence) comes from the environment."""
    from taxiflow.flows.train import train

    def job() -> tuple[StageTimer, dict[str, object]]:
        timer = StageTimer()
        with timer.stage("flow"):
            summary = train(
                taxi="green",
                train_month=tlc_month(args.train),
                val_month=tlc_month(args.val),
                data_dir=str(args.train.parent),
                num_boost_round=args.num_boost_round,
                tlc_base_url="",
            )
        facts = {k: summary[k] for k in ("rmse", "rows_train", "rows_val", "n_features", "model_version")}
        return timer, facts | {"fit_s": summary["seconds"]["fit"]}

    return job


_KINDS: dict[str, Callable[[argparse.Namespace], Job]] = {
    "course": _course,
    "taxiflow": _taxiflow,
    "decode-floor": _decode_floor,
    "train-floor": _train_floor,
    "flow": _flow,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(_KINDS))
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--tracking-dir", type=Path, help="MLflow store; without it pipelines stop at the feature matrix")
    parser.add_argument("--num-boost-round", type=int)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()

    start = time.perf_counter()
    job = _KINDS[args.kind](args)
    imports_s, rss_ready = time.perf_counter() - start, current_rss_mb()
    timer, facts = job()
    result = {
        "stages": timer.seconds,
        "facts": facts,
        "imports_s": imports_s,
        "rss_after_imports_mb": rss_ready,
        "peak_rss_self_mb": peak_rss_mb(),
    }
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
