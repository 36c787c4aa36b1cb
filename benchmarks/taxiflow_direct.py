"""taxiflow's pipeline as plain function calls: no Prefect, the training use case its flow runs.

Each stage calls the same `core.training_plan` step the `train` flow's task calls (never a copy),
with a timer around it. The smoke test checks that both give the same RMSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.measure import StageTimer
from benchmarks.pairs import tlc_month
from taxiflow.core.features import DEFAULT_FEATURES, FeatureVocabulary, required_columns
from taxiflow.core.months import Month
from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.request import TrainRequest
from taxiflow.core.schema import DROPOFF_AT, PICKUP_AT, layout_for
from taxiflow.core.summary import MonthFacts
from taxiflow.core.training_plan import (
    FitMatrix,
    TrainingPlan,
    evaluate_duration_model,
    fit_duration_model,
    fit_matrix,
    fit_plan_vocabulary,
    plan_training,
    training_facts,
)
from taxiflow.io.month_cache import TripFile
from taxiflow.io.trip_files import local_month_file
from taxiflow.io.trip_tables import read_trip_table

TAXI = "green"
FEATURES = DEFAULT_FEATURES


def benchmark_plan(*, collapse: bool = True, num_boost_round: int | None = None) -> TrainingPlan:
    """What `taxiflow train` plans for the course's setup (XGBoost, course parameters)."""
    return plan_training(TrainRequest(taxi=TAXI, features=list(FEATURES), collapse_duplicates=collapse, num_boost_round=num_boost_round))


@dataclass(frozen=True)
class Matrices:
    """Both months prepared, and the matrices the model is fitted and early-stopped on."""

    files: tuple[TripFile, TripFile]
    train: PreparedTrips
    val: PreparedTrips
    vocabulary: FeatureVocabulary
    x_fit: FitMatrix  # training rows as XGBoost sees them (collapsed and weighted, or not; zone codes)
    x_stop: FitMatrix  # validation rows for early stopping (likewise); metrics use every row

    def facts(self) -> dict[str, object]:
        return {
            "rows_train": self.train.rows_kept,
            "rows_val": self.val.rows_kept,
            "rows_fit": self.x_fit.rows,
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
        train, val = (prepare_trips(t, source=f.path, month=Month.parse(f.month)) for t, f in zip(tables, files, strict=True))
        del tables  # the flow drops the decoded tables once prepared; so must the memory figure
    with timer.stage("features"):
        plan = benchmark_plan(collapse=collapse)
        vocabulary = fit_plan_vocabulary(plan, train)
        x_fit, x_stop = fit_matrix(plan, train, vocabulary), fit_matrix(plan, val, vocabulary)
    return Matrices(files, train, val, vocabulary, x_fit, x_stop)


def import_training_libraries() -> None:
    """Load what training and logging import lazily, so their stages time work, not imports."""
    import xgboost  # noqa: F401

    import taxiflow.io.tracking  # noqa: F401


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

    plan = benchmark_plan(collapse=collapse, num_boost_round=num_boost_round)
    with timer.stage("train"):
        model = fit_duration_model(plan, m.x_fit, m.x_stop)
    with timer.stage("evaluate"):
        metrics = evaluate_duration_model(model, m.val, m.vocabulary).metrics
    with timer.stage("log"):
        month_facts = [MonthFacts(f.month, f.path, f.sha256, p.rows_read, p.rows_kept, p.dropped) for f, p in zip(m.files, (m.train, m.val), strict=True)]
        training = training_facts(plan, month_facts[0], month_facts[1], m.vocabulary, model, metrics)
        store = TrackingStore(f"sqlite:///{tracking_dir / 'mlflow.db'}", "nyc-taxi-experiment", local_artifact_root=tracking_dir / "mlartifacts")
        store.preflight("nyc-taxi-duration")
        logged = store.log_run(training, model, m.vocabulary, run_name="benchmark")
        registered = store.register(training, *logged, "nyc-taxi-duration")
        store.commit(registered)
        store.finish(registered.run_id)
    return timer, m.facts() | {"rmse": metrics.rmse, "model_version": registered.model_version}
