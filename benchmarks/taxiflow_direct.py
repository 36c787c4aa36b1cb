"""taxiflow's pipeline as plain function calls: no Prefect, the `core`/`io` functions its flow wires.

It calls taxiflow's own functions (never copies of them) and passes between them what the `train`
flow passes (src/taxiflow/flows/train.py): when the flow's wiring changes, change `read_to_features`
and `run` with it. The smoke test checks that both give the same RMSE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.measure import StageTimer
from benchmarks.pairs import tlc_month
from taxiflow.core.features import (
    DEFAULT_FEATURES,
    FeatureMatrix,
    FeatureVocabulary,
    build_feature_matrix,
    collapse_duplicate_rows,
    fit_vocabulary,
    required_columns,
)
from taxiflow.core.metrics import regression_metrics
from taxiflow.core.months import Month
from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.schema import DROPOFF_AT, DURATION, PICKUP_AT, layout_for
from taxiflow.core.summary import MonthFacts, TrainingFacts
from taxiflow.core.training import XGBoostParams, fit_xgboost, predict_trips, vocabulary_min_count
from taxiflow.io.month_cache import TripFile
from taxiflow.io.trip_files import local_month_file
from taxiflow.io.trip_tables import read_trip_table

TAXI = "green"
FEATURES = DEFAULT_FEATURES
# The flow's vocabulary threshold for XGBoost with the course's parameters (no user --min-count).
MIN_COUNT = vocabulary_min_count("xgboost", XGBoostParams(), 1)


@dataclass(frozen=True)
class Matrices:
    """Both months prepared, and the matrices the model is fitted and early-stopped on."""

    files: tuple[TripFile, TripFile]
    train: PreparedTrips
    val: PreparedTrips
    vocabulary: FeatureVocabulary
    x_fit: FeatureMatrix  # training rows as XGBoost sees them (collapsed and weighted, or not)
    x_stop: FeatureMatrix  # validation rows for early stopping (likewise); metrics use every row

    def facts(self) -> dict[str, object]:
        return {
            "rows_train": self.train.rows_kept,
            "rows_val": self.val.rows_kept,
            "rows_fit": self.x_fit.X.shape[0],
            "n_features": self.vocabulary.size,
            "n_features_pruned": self.vocabulary.pruned,
        }


def _month_file(path: Path) -> TripFile:
    trip_file = local_month_file(TAXI, tlc_month(path), path.parent)
    if trip_file is None:
        raise FileNotFoundError(path)
    return trip_file


def read_to_features(train_path: Path, val_path: Path, timer: StageTimer, *, collapse: bool = True) -> Matrices:
    """read -> prepare -> features for a training and a validation month, as the flow does them."""
    columns = [PICKUP_AT, DROPOFF_AT, *required_columns(FEATURES)]
    with timer.stage("read"):
        # The flow's first task verifies the local file (footer, sha256) before reading it.
        files = (_month_file(train_path), _month_file(val_path))
        tables = [read_trip_table(f.path, layout_for(TAXI), columns) for f in files]
    with timer.stage("prepare"):
        train, val = (prepare_trips(t, source=f.path, month=Month.parse(f.month)) for t, f in zip(tables, files))
        del tables  # the flow drops the decoded tables once prepared; so must the memory figure
    with timer.stage("features"):
        vocabulary = fit_vocabulary(train.frame, FEATURES, min_count=MIN_COUNT)
        fit_frames = (collapse_duplicate_rows(p.frame, FEATURES) if collapse else p.frame for p in (train, val))
        x_fit, x_stop = (build_feature_matrix(frame, vocabulary) for frame in fit_frames)
    return Matrices(files, train, val, vocabulary, x_fit, x_stop)


def import_training_libraries() -> None:
    """Load what training and logging import lazily, so their stages time work, not imports."""
    import taxiflow.io.tracking  # noqa: F401
    import xgboost  # noqa: F401


def run(
    train_path: Path,
    val_path: Path,
    *,
    tracking_dir: Path | None,
    num_boost_round: int | None = None,
    collapse: bool = True,
) -> tuple[StageTimer, dict[str, object]]:
    """read -> prepare -> features -> train -> evaluate -> log; stops after features when `tracking_dir` is None."""
    timer = StageTimer()
    m = read_to_features(train_path, val_path, timer, collapse=collapse)
    if tracking_dir is None:
        return timer, m.facts()

    # Imported here: the read -> features measurement should not carry MLflow in its RSS.
    from taxiflow.io.tracking import TrackingStore

    params = XGBoostParams().with_overrides(num_boost_round=num_boost_round)
    with timer.stage("train"):
        model = fit_xgboost(m.x_fit.X, m.x_fit.y, m.x_stop.X, m.x_stop.y, params, weight_train=m.x_fit.weight, weight_val=m.x_stop.weight)
    with timer.stage("evaluate"):
        metrics = regression_metrics(m.val.frame[DURATION].to_numpy(), predict_trips(model, m.val.frame, m.vocabulary))
    with timer.stage("log"):
        month_facts = [
            MonthFacts(f.month, f.path, f.sha256, p.rows_read, p.rows_kept, p.dropped) for f, p in zip(m.files, (m.train, m.val))
        ]
        training = TrainingFacts(
            taxi=TAXI,
            model="xgboost",
            features=FEATURES,
            train=month_facts[0],
            val=month_facts[1],
            n_features=m.vocabulary.size,
            n_features_pruned=m.vocabulary.pruned,
            rmse=metrics.rmse,
            mae=metrics.mae,
            model_params=asdict(params),
            options={"min_count": 1, "min_count_applied": MIN_COUNT, "collapse_duplicates": collapse, "month_window_days": None},
            best_iteration=model.best_iteration,
        )
        store = TrackingStore(f"sqlite:///{tracking_dir / 'mlflow.db'}", "nyc-taxi-experiment", local_artifact_root=tracking_dir / "mlartifacts")
        store.preflight("nyc-taxi-duration")
        logged = store.log_run(training, model, m.vocabulary, run_name="benchmark")
        registered = store.register(training, *logged, "nyc-taxi-duration")
        store.commit(registered)
        store.finish(registered.run_id)
    return timer, m.facts() | {"rmse": metrics.rmse, "model_version": registered.model_version}
