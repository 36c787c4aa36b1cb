"""Batch scoring: which model scores, and a month streamed through it row group by row group.

No Prefect here: the `score` flow's tasks call these, and so does the scoring benchmark. Every ride
whose model inputs pass the row contracts is scored, whatever its duration; rides with an actual
duration of 1..60 min (training's contract) give the month's RMSE. Memory is bounded by one batch
plus what is kept per distinct value: the drift check's counts (`core.drift.ValueCounts`) and the
predictions of inputs already scored (`core.training.RememberingPredictor`, at most 4M of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from taxiflow.core.drift import MonthProfile
from taxiflow.core.errors import DataFileError, InvalidArgumentError, NoUsableRowsError, TaxiflowError
from taxiflow.core.features import FeatureVocabulary, required_columns
from taxiflow.core.metrics import ErrorTotals, RegressionMetrics
from taxiflow.core.months import last_training_month
from taxiflow.core.preparation import RIDE_INDEX, describe_drops, prepare_rides
from taxiflow.core.schema import DISTANCE, DROPOFF_AT, DROPOFF_ZONE, DURATION, PICKUP_AT, PICKUP_ZONE, check_fields_available, layout_for
from taxiflow.core.training import DurationModel, RememberingPredictor
from taxiflow.io.predictions import PredictionSink
from taxiflow.io.trip_tables import iter_trip_batches

if TYPE_CHECKING:  # MLflow is imported where the registry is used: scoring a file needs none of it
    from taxiflow.io.registry import ModelRegistry

BATCH_ROWS = 1 << 18  # rides per batch: ~10 MB of decoded columns; a 3.4M-row month is 13 batches
# The drift check's columns, by the names a person knows them (the TLC's), from the canonical ones.
_PROFILE_SOURCES = {"trip_distance": DISTANCE, "PULocationID": PICKUP_ZONE, "DOLocationID": DROPOFF_ZONE}


class ModelNotAvailableError(TaxiflowError):
    """There is no model to score with: no champion, or the version asked for can't be used."""


@dataclass(frozen=True)
class ScoringModel:
    """A registered version, loaded from its own files (no pickle), and what its registration says."""

    name: str
    version: str
    tags: dict[str, str]
    model: DurationModel
    vocabulary: FeatureVocabulary

    @property
    def taxi(self) -> str | None:
        return self.tags.get("taxi") or None

    @property
    def train_month(self) -> str | None:
        return self.tags.get("train_month") or None

    @property
    def reference_month(self) -> str | None:
        """The month a drift check compares with: the training month, the newest of a range."""
        return last_training_month(self.train_month) if self.train_month else None

    @property
    def rmse(self) -> float | None:
        try:
            return float(self.tags["rmse"])
        except (KeyError, ValueError):
            return None


def resolve_version(registry: ModelRegistry, version: int | str | None):
    """The version to score with: `version`, or the champion. A clear error when there is none.

    Returns MLflow's ModelVersion. A version left `pending` by a run that never committed is refused.
    """
    from taxiflow.io.registry import CHAMPION
    from taxiflow.io.tracking import PENDING, STATE_TAG

    if version is None:
        found = registry.version_by_alias(CHAMPION)
        if found is None:
            raise ModelNotAvailableError(
                f"{registry.model_name} has no champion in {registry.store.shown_uri}: train one first (`taxiflow train`) or pass --model-version"
            )
    else:
        found = registry.get_version(str(version))
    if found.tags.get(STATE_TAG) == PENDING:
        raise InvalidArgumentError(f"{registry.model_name} v{found.version} is not committed (its training run did not finish): choose another version")
    return found


def load_scoring_model(registry: ModelRegistry, version: int | str | None, taxi: str) -> ScoringModel:
    found = resolve_version(registry, version)
    model, vocabulary = registry.load_version(str(found.version))
    check_fields_available(taxi, required_columns(vocabulary.features), what=f"{registry.model_name} v{found.version}'s features")
    return ScoringModel(registry.model_name, str(found.version), dict(found.tags), model, vocabulary)


@dataclass
class ScoredMonth:
    """What streaming one month through a model found."""

    source: str
    rows_read: int = 0
    rows_scored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rides not scored
    errors: ErrorTotals = field(default_factory=ErrorTotals)
    profile: MonthProfile = field(default_factory=MonthProfile)
    batches: int = 0
    inputs_predicted: int = 0  # distinct model inputs the model scored (each once for the month)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rows_with_actuals(self) -> int:
        return self.errors.count

    @property
    def metrics(self) -> RegressionMetrics | None:
        return self.errors.metrics()

    def _time(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - started
        return now


def score_trip_file(
    path: str,
    taxi: str,
    scoring: ScoringModel,
    *,
    sink: PredictionSink | None,
    source: str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ScoredMonth:
    """Score every ride of `path` with valid model inputs, batch by batch, into `sink` (None: profile only).

    The sink is left to the caller to commit (after this returns) or abort (on any error).
    """
    label = source or path
    layout = layout_for(taxi)
    feature_columns = required_columns(scoring.vocabulary.features)
    # The model's inputs, the timestamps (actual durations), and what the drift check compares.
    columns = [PICKUP_AT, DROPOFF_AT, *dict.fromkeys([*feature_columns, PICKUP_ZONE, DROPOFF_ZONE, *([DISTANCE] if layout.has(DISTANCE) else [])])]
    scored = ScoredMonth(source=label)
    predictor = RememberingPredictor(scoring.model, scoring.vocabulary)
    clock = time.perf_counter()
    for batch in iter_trip_batches(path, layout, columns, batch_rows=batch_rows, source=label):
        clock = scored._time("read", clock)
        rides = prepare_rides(batch, source=label, feature_columns=feature_columns, first_index=scored.rows_read)
        scored.rows_read += rides.rows_read
        scored.batches += 1
        for reason, n in rides.skipped.items():
            scored.skipped[reason] = scored.skipped.get(reason, 0) + n
        frame = rides.frame
        clock = scored._time("prepare", clock)
        if frame.height == 0:
            continue
        predictions = predictor.predict(frame)
        clock = scored._time("predict", clock)
        if sink is not None:
            sink.write(frame[RIDE_INDEX].to_numpy(), predictions)
            clock = scored._time("write", clock)
        scored.rows_scored += frame.height
        actual = frame[DURATION].to_numpy()  # NaN where there is no usable actual duration
        known = ~np.isnan(actual)
        scored.errors.add(actual[known], predictions[known])
        for name, column in _PROFILE_SOURCES.items():
            if column in frame.columns:
                scored.profile.add(name, frame[column].to_numpy())
        scored.profile.add("prediction", predictions.astype(np.float64))
        clock = scored._time("profile", clock)
    scored.inputs_predicted = predictor.predicted_rows
    if scored.rows_read == 0:
        raise DataFileError(f"{label}: holds no trips (0 rows)")
    if scored.rows_scored == 0:
        raise NoUsableRowsError(f"{label}: no ride can be scored: all {scored.rows_read:,} rows lack valid model inputs: {describe_drops(scored.skipped)}")
    return scored
