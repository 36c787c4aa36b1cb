"""Lower bounds: decoding only the five needed parquet columns, and XGBoost alone on ready matrices."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset  # noqa: F401 - read_table loads it on first use: an import, not decoding
import pyarrow.parquet as pq

from benchmarks.measure import StageTimer

NEEDED_COLUMNS = ["lpep_pickup_datetime", "lpep_dropoff_datetime", "PULocationID", "DOLocationID", "trip_distance"]


def decode(train_path: Path, val_path: Path) -> tuple[StageTimer, dict[str, object]]:
    timer = StageTimer()
    with timer.stage("decode"):
        tables = [pq.read_table(p, columns=NEEDED_COLUMNS) for p in (train_path, val_path)]
    return timer, {"rows_train": tables[0].num_rows, "rows_val": tables[1].num_rows}


def train(train_path: Path, val_path: Path, *, num_boost_round: int) -> tuple[StageTimer, dict[str, object]]:
    """`xgb.train` with the course's parameters on taxiflow's matrices, built beforehand (untimed).

    Twice: on every kept training row (the work the course's model needs), and on the rows taxiflow
    actually fits on (duplicates collapsed into weights, if its flow does that).
    """
    import xgboost as xgb

    from benchmarks import course, taxiflow_direct
    from taxiflow.core.features import build_feature_matrix, collapse_duplicate_rows

    m = taxiflow_direct.read_to_features(train_path, val_path, StageTimer())

    def one_hot(prepared, collapse: bool):
        # The course's representation (one-hot CSR), whatever taxiflow's own fit uses (zone codes).
        frame = collapse_duplicate_rows(prepared.frame, m.vocabulary.features) if collapse else prepared.frame
        return build_feature_matrix(frame, m.vocabulary)

    timer = StageTimer()
    facts: dict[str, object] = {}
    for name, collapse in (("all_rows", False), ("fit_rows", True)):
        x_train, x_stop = one_hot(m.train, collapse), one_hot(m.val, collapse)
        with timer.stage(f"dmatrix_{name}"):
            dtrain = xgb.DMatrix(x_train.X, label=x_train.y, weight=x_train.weight)
            dstop = xgb.DMatrix(x_stop.X, label=x_stop.y, weight=x_stop.weight)
        with timer.stage(f"boost_{name}"):
            booster = xgb.train(
                course.COURSE_PARAMS,
                dtrain,
                num_boost_round=num_boost_round,
                evals=[(dstop, "validation")],
                early_stopping_rounds=course.EARLY_STOPPING_ROUNDS,
                verbose_eval=False,
            )
        facts[f"rows_{name}"] = x_train.X.shape[0]
        facts[f"best_iteration_{name}"] = booster.best_iteration
    return timer, facts
