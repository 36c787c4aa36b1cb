"""The training use case, without Prefect: what a request means, step by step.

`plan_training` turns a request into the decisions the steps share (the vocabulary threshold
XGBoost can split on, whether rows collapse, the matrix precision); each step below is one stage of
the pipeline. The `train` flow runs them as tasks (one per stage in the UI), the benchmarks call
the same steps with a timer around each, and a distributed engine would replace only the fitting step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.features import (
    CategoryCounts,
    FeatureMatrix,
    FeatureVocabulary,
    ZoneCodeMatrix,
    build_feature_matrix,
    build_zone_code_matrix,
    collapse_duplicate_rows,
    fit_vocabulary,
    left_out_categories,
    vocabulary_from_counts,
)
from taxiflow.core.metrics import RegressionMetrics, regression_metrics
from taxiflow.core.preparation import PreparedTrips
from taxiflow.core.request import TrainRequest
from taxiflow.core.schema import DURATION
from taxiflow.core.summary import MonthFacts, TrainingFacts
from taxiflow.core.training import (
    FEATURE_DTYPE,
    DaskCodes,
    DurationModel,
    LinearModel,
    XGBoostModel,
    XGBoostParams,
    fit_linear,
    fit_xgboost,
    fit_xgboost_on_codes,
    fit_xgboost_on_dask_codes,
    fits_collapsed_rows,
    predict_trips,
    vocabulary_min_count,
)


@dataclass(frozen=True)
class TrainingPlan:
    taxi: str
    model: str
    features: tuple[str, ...]
    params: XGBoostParams
    min_count: int  # as requested
    min_count_applied: int  # raised to what XGBoost can split on: leaving rarer categories out is exact
    collapse_requested: bool
    collapse: bool  # duplicate rows fitted once with weights (XGBoost only)
    month_window_days: int | None
    # XGBoost grows its trees on zone codes (same trees, faster: `fit_xgboost_on_codes`), exact while
    # the categories left out of the vocabulary are exactly those no split can use.
    zone_codes: bool = False
    engine: str = "local"  # dask: the fitting step runs on a Dask cluster (`fit_duration_model_on_dask`)

    def identity(self) -> dict[str, object]:
        """What decides the fitted model besides the data (`core.identity.training_key`)."""
        return {"model": self.model, "features": list(self.features), "params": asdict(self.params) if self.model == "xgboost" else {}, **self.options()}

    def options(self) -> dict[str, object]:
        return {
            "min_count": self.min_count,
            "min_count_applied": self.min_count_applied,
            "collapse_duplicates": self.collapse_requested,
            "collapse_applied": self.collapse,
            "month_window_days": self.month_window_days,
            "zone_codes": self.zone_codes,
            "engine": self.engine,
        }


def plan_training(request: TrainRequest) -> TrainingPlan:
    params = request.xgboost_params()
    return TrainingPlan(
        taxi=request.taxi,
        model=request.model,
        features=request.feature_set,
        params=params,
        min_count=request.min_count,
        min_count_applied=vocabulary_min_count(request.model, params, request.min_count),
        collapse_requested=request.collapse_duplicates,
        collapse=fits_collapsed_rows(request.model, request.collapse_duplicates),
        month_window_days=request.month_window_days,
        zone_codes=request.model == "xgboost" and vocabulary_min_count(request.model, params, request.min_count) <= params.min_splittable_count(),
        engine=request.engine,
    )


def fit_plan_vocabulary(plan: TrainingPlan, train: PreparedTrips) -> FeatureVocabulary:
    return fit_vocabulary(train.frame, plan.features, min_count=plan.min_count_applied)


def plan_vocabulary_from_counts(plan: TrainingPlan, counts: CategoryCounts) -> tuple[FeatureVocabulary, dict[str, np.ndarray]]:
    """`fit_plan_vocabulary` from partitions' merged category counts, and the categories it leaves out (their codes' order)."""
    return vocabulary_from_counts(counts, min_count=plan.min_count_applied), left_out_categories(counts, min_count=plan.min_count_applied)


FitMatrix = FeatureMatrix | ZoneCodeMatrix


def fit_matrix(plan: TrainingPlan, prepared: PreparedTrips, vocabulary: FeatureVocabulary) -> FitMatrix:
    """The rows a fit sees (collapsed and weighted, or every row): zone codes for XGBoost where exact, else one-hot in the model's precision."""
    frame = collapse_duplicate_rows(prepared.frame, vocabulary.features) if plan.collapse else prepared.frame
    if plan.zone_codes and (codes := build_zone_code_matrix(frame, vocabulary)) is not None:
        return codes
    return build_feature_matrix(frame, vocabulary, FEATURE_DTYPE[plan.model])


def fit_code_matrix(plan: TrainingPlan, prepared: PreparedTrips, vocabulary: FeatureVocabulary, left_out: dict[str, np.ndarray]) -> ZoneCodeMatrix | None:
    """`fit_matrix`'s zone codes for rows fitted in partitions: left-out categories coded as in every other partition."""
    frame = collapse_duplicate_rows(prepared.frame, vocabulary.features) if plan.collapse else prepared.frame
    return build_zone_code_matrix(frame, vocabulary, left_out=left_out)


def fit_duration_model(plan: TrainingPlan, train: FitMatrix, val: FitMatrix, *, callbacks: list | None = None) -> DurationModel:
    if isinstance(train, ZoneCodeMatrix) and isinstance(val, ZoneCodeMatrix):
        return fit_xgboost_on_codes(train, val, plan.params, callbacks=callbacks)
    if isinstance(train, ZoneCodeMatrix) or isinstance(val, ZoneCodeMatrix):
        raise ValueError("training and validation rows must be built alike (both zone codes or both one-hot): fit_matrix gives both")
    if plan.model == "linear":
        return fit_linear(train.X, train.target, train.weight)
    return fit_xgboost(train.X, train.target, val.X, val.target, plan.params, weight_train=train.weight, weight_val=val.weight, callbacks=callbacks)


def check_dask_plan(plan: TrainingPlan) -> None:
    """Before any month is read: engine dask fits XGBoost on zone codes, exact only while the vocabulary leaves out no splittable category."""
    if plan.engine == "dask" and not (plan.model == "xgboost" and plan.zone_codes):
        raise InvalidArgumentError(
            f"engine dask fits XGBoost on zone codes: keep min_count at most what XGBoost can split ({plan.params.min_splittable_count()} here)"
        )


def fit_duration_model_on_dask(plan: TrainingPlan, train: DaskCodes, val: ZoneCodeMatrix, client: object) -> DurationModel:
    """`fit_duration_model`'s XGBoost model, fitted by xgboost.dask on `client`'s cluster from rows already on its workers."""
    check_dask_plan(plan)
    return fit_xgboost_on_dask_codes(train, val, plan.params, client)


@dataclass(frozen=True)
class Evaluation:
    metrics: RegressionMetrics
    predictions: np.ndarray  # minutes, one per validation row: the report's plots reuse them


def evaluate_duration_model(model: DurationModel, val: PreparedTrips, vocabulary: FeatureVocabulary) -> Evaluation:
    """Metrics over every validation row (whatever the fit saw)."""
    predictions = predict_trips(model, val.frame, vocabulary)
    return Evaluation(regression_metrics(val.frame[DURATION].to_numpy(), predictions), predictions)


def training_facts(
    plan: TrainingPlan,
    train: MonthFacts,
    val: MonthFacts,
    vocabulary: FeatureVocabulary,
    model: DurationModel,
    metrics: RegressionMetrics,
) -> TrainingFacts:
    return TrainingFacts(
        taxi=plan.taxi,
        model=plan.model,
        features=plan.features,
        train=train,
        val=val,
        n_features=vocabulary.size,
        n_features_pruned=vocabulary.pruned,
        rmse=metrics.rmse,
        mae=metrics.mae,
        model_params=asdict(plan.params) if plan.model == "xgboost" else {},
        options=plan.options(),
        intercept=model.intercept if isinstance(model, LinearModel) else None,
        best_iteration=model.best_iteration if isinstance(model, XGBoostModel) else None,
    )
