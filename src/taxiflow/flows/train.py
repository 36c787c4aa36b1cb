"""The `train` flow: get each month -> prepare -> build features -> fit -> evaluate -> log and register -> report.

Tasks here only wire `core` (pure) and `io` (side effects) together and set policy: retries for
network steps, no input hashing for tasks that take big frames (Prefect would pickle them to hash).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from taxiflow.core.features import (
    FeatureMatrix,
    FeatureVocabulary,
    build_feature_matrix,
    collapse_duplicate_rows,
    fit_vocabulary,
    parse_features,
    required_columns,
)
from taxiflow.core.metrics import RegressionMetrics, regression_metrics
from taxiflow.core.months import Month, parse_month_pair
from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.report import render_training_report
from taxiflow.core.schema import DROPOFF_AT, DURATION, PICKUP_AT, check_fields_available, layout_for
from taxiflow.core.summary import MonthFacts, RegisteredModel, TrainingFacts, data_quality_rows, training_summary
from taxiflow.core.training import (
    FEATURE_DTYPE,
    DurationModel,
    LinearModel,
    XGBoostModel,
    XGBoostParams,
    fit_linear,
    fit_xgboost,
    fits_collapsed_rows,
    predict_trips,
    vocabulary_min_count,
)
from taxiflow.core.messages import LifecycleEvent
from taxiflow.flows.evaluation_report import get_zone_boroughs, publish_evaluation_report
from taxiflow.flows.lifecycle import GateResult, commit_with_decision, evaluate_gate, publish_promotion_decision
from taxiflow.flows.worker_bond import exit_with_worker
from taxiflow.io.failpoints import failpoint
from taxiflow.jobs.notify import current_flow_run_url, notify_train_run_state, send_event
from taxiflow.io.month_cache import MonthCache, TripFile
from taxiflow.io.sources import HttpSource, MonthSource, RetryPolicy, S3Source
from taxiflow.io.registry import ModelRegistry, promotion_lock
from taxiflow.io.tracking import TrackingStore, mlflow_run_url, mlflow_version_url, redact_uri
from taxiflow.io.trip_files import get_month_file
from taxiflow.io.trip_tables import read_trip_table
from taxiflow.settings import TaxiflowSettings, load_settings

REPORT_KEY = "duration-model-report"
QUALITY_KEY = "data-quality"
SourceChoice = Literal["auto", "local", "tlc", "s3"]
MonthText = Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")]
FeatureChoice = Literal["pu_do", "pu", "do", "distance"]


def month_source(kind: str, settings: TaxiflowSettings, tlc_base_url: str | None, s3_block: str | None) -> MonthSource | None:
    """The download source for months not in the data directory (None: local files only)."""
    if kind == "local":
        return None
    if kind == "s3":
        return S3Source.from_block(s3_block or settings.s3_block)
    base_url = settings.tlc_base_url if tlc_base_url is None else tlc_base_url
    if not base_url:
        return None
    policy = RetryPolicy(retries=settings.download_retries, backoff_s=settings.download_backoff_s)
    return HttpSource(base_url, timeout_s=settings.download_timeout_s, policy=policy)


# Network retries (backoff, jitter, no retry on 404) happen inside the source, per download.
@task(task_run_name="get-{taxi}-{month}", cache_policy=NO_CACHE)
def get_month(taxi: str, month: str, source_kind: str, data_dir: str | None, tlc_base_url: str | None, s3_block: str | None) -> TripFile:
    settings = load_settings()
    source = month_source(source_kind, settings, tlc_base_url, s3_block)
    local_dir = Path(data_dir) if source_kind in ("auto", "local") and data_dir else None
    trip_file = get_month_file(taxi, month, data_dir=local_dir, source=source, cache=MonthCache(settings.cache_dir()))
    get_run_logger().info("%s %s: %s (%d rows, sha256 %s…, from %s)", taxi, month, trip_file.path, trip_file.num_rows, trip_file.sha256[:12], trip_file.origin)
    return trip_file


@task(task_run_name="prepare-{trip_file.month}", cache_policy=NO_CACHE)
def prepare_month(trip_file: TripFile, features: tuple[str, ...], month_window_days: int | None) -> PreparedTrips:
    columns = [PICKUP_AT, DROPOFF_AT, *required_columns(features)]
    table = read_trip_table(trip_file.path, layout_for(trip_file.taxi), columns)
    prepared = prepare_trips(table, source=trip_file.path, month=Month.parse(trip_file.month), month_window_days=month_window_days)
    get_run_logger().info("%s: kept %d of %d rows; dropped %s", trip_file.month, prepared.rows_kept, prepared.rows_read, prepared.dropped or "none")
    return prepared


@task(cache_policy=NO_CACHE)
def fit_feature_vocabulary(train: PreparedTrips, features: tuple[str, ...], min_count: int) -> FeatureVocabulary:
    vocabulary = fit_vocabulary(train.frame, features, min_count=min_count)
    get_run_logger().info(
        "vocabulary: %d columns from %s (%d categories seen fewer than %d times left out)", vocabulary.size, ",".join(features), vocabulary.pruned, min_count
    )
    return vocabulary


@task(task_run_name="build-features-{name}", cache_policy=NO_CACHE)
def build_features(prepared: PreparedTrips, vocabulary: FeatureVocabulary, name: str, collapse: bool, model: str) -> FeatureMatrix:
    frame = collapse_duplicate_rows(prepared.frame, vocabulary.features) if collapse else prepared.frame
    features = build_feature_matrix(frame, vocabulary, FEATURE_DTYPE[model])
    if collapse:
        get_run_logger().info("%s: %d rows collapsed to %d distinct weighted rows", name, prepared.rows_kept, frame.height)
    return features


@task(cache_policy=NO_CACHE)
def fit_model(model: str, train: FeatureMatrix, val: FeatureMatrix, params: XGBoostParams) -> DurationModel:
    if model == "linear":
        return fit_linear(train.X, train.y, train.weight)
    return fit_xgboost(train.X, train.y, val.X, val.y, params, weight_train=train.weight, weight_val=val.weight)


@task(cache_policy=NO_CACHE)
def evaluate_model(model: DurationModel, val: PreparedTrips, vocabulary: FeatureVocabulary) -> RegressionMetrics:
    metrics = regression_metrics(val.frame[DURATION].to_numpy(), predict_trips(model, val.frame, vocabulary))
    get_run_logger().info("validation RMSE %.4f, MAE %.4f", metrics.rmse, metrics.mae)
    return metrics


@task(cache_policy=NO_CACHE)
def check_tracking_store(store: TrackingStore, model_name: str) -> str:
    """Before any data is read: a wrong URI or an unwritable store fails in seconds, not after the fit."""
    experiment_id = store.preflight(model_name)
    get_run_logger().info("MLflow %s: experiment %r (id %s) ready", redact_uri(store.tracking_uri), store.experiment_name, experiment_id)
    return experiment_id


@task(cache_policy=NO_CACHE)
def log_model_run(store: TrackingStore, facts: TrainingFacts, model: DurationModel, vocabulary: FeatureVocabulary) -> tuple[str, str, str]:
    tags = {"taxiflow.prefect_flow_run_id": str(flow_run.get_id() or "")}
    logged = store.log_run(facts, model, vocabulary, run_name=f"{facts.taxi}-{facts.train.month}-{facts.val.month}-{facts.model}", tags=tags)
    get_run_logger().info("logged MLflow run %s", logged[1])
    return logged


@task(cache_policy=NO_CACHE)
def register_model_version(store: TrackingStore, facts: TrainingFacts, logged: tuple[str, str, str], model_name: str) -> RegisteredModel:
    registered = store.register(facts, *logged, model_name)
    get_run_logger().info("registered %s version %s (pending until the run commits)", registered.model_name, registered.model_version)
    return registered




@task(cache_policy=NO_CACHE)
def publish_data_quality(facts: TrainingFacts) -> str:
    create_table_artifact(
        key=QUALITY_KEY,
        table=data_quality_rows(facts),
        description=f"Rows kept and dropped by reason: {facts.taxi} {facts.train.month} (train), {facts.val.month} (validation)",
    )
    return QUALITY_KEY


@task(cache_policy=NO_CACHE)
def publish_report(facts: TrainingFacts, registered: RegisteredModel, gate: GateResult, links: dict[str, str], plots: list[str]) -> str:
    failpoint("publish-report")
    create_markdown_artifact(
        key=REPORT_KEY,
        markdown=render_training_report(facts, registered, gate.decision, links=links, note=gate.note, plots=plots),
        description=f"{facts.taxi} {facts.train.month}->{facts.val.month}: RMSE {facts.rmse:.4f}, {registered.model_name} v{registered.model_version}",
    )
    return REPORT_KEY


def registry_links(store: TrackingStore, registered: RegisteredModel) -> dict[str, str]:
    links = {}
    if (url := mlflow_version_url(store.tracking_uri, registered.model_name, registered.model_version)) is not None:
        links[f"MLflow: {registered.model_name} v{registered.model_version}"] = url
    if (url := mlflow_run_url(store.tracking_uri, registered.experiment_id, registered.run_id)) is not None:
        links["MLflow run (plots under Artifacts)"] = url
    if ui := flow_run.get_flow_run_ui_url():
        links["Prefect flow run"] = ui
    return links


def abandon_version(store: TrackingStore, registry: ModelRegistry, run_id: str, registered: RegisteredModel, gate: GateResult | None) -> None:
    """Best-effort undo after a failure before the commit point (the failure is what gets reported)."""
    try:
        registry.release(registered.model_version, gate.decision.champion_version if gate else None)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().error("could not check the champion alias of v%s: %s", registered.model_version, exc)
    store.abandon(run_id, registered)


def _month_facts(trip_file: TripFile, prepared: PreparedTrips) -> MonthFacts:
    return MonthFacts(trip_file.month, trip_file.path, trip_file.sha256, prepared.rows_read, prepared.rows_kept, prepared.dropped)


@task(cache_policy=NO_CACHE)
def notify_outcome(event: LifecycleEvent, targets: list[str] | None) -> list[str]:
    """After the commit point: best-effort, bounded in time, never failing the run."""
    try:
        deliveries = send_event(event, targets)
    except Exception as exc:  # noqa: BLE001 - send_event promises not to raise; the run is committed either way
        get_run_logger().warning("notifications not sent: %s", type(exc).__name__)
        return []
    if deliveries:
        get_run_logger().info("notifications: %s", "; ".join(f"{'ok' if d.ok else 'FAILED'} {d.target}" for d in deliveries))
    return [str(d) for d in deliveries]


# Failures and crashes notify through Prefect's state hooks (the success path notifies in the flow).
@flow(name="train", log_prints=True, on_failure=[notify_train_run_state], on_crashed=[notify_train_run_state], on_cancellation=[notify_train_run_state])
def train(
    taxi: Literal["green", "yellow", "fhv", "fhvhv"] = "green",
    train_month: MonthText = "2023-01",
    val_month: MonthText = "2023-02",
    data_dir: str | None = None,
    source: SourceChoice = "auto",
    model: Literal["xgboost", "linear"] = "xgboost",
    features: list[FeatureChoice] = ["pu_do", "distance"],  # noqa: B006 - Prefect needs a literal default for the form
    min_count: Annotated[int, Field(ge=1)] = 1,
    collapse_duplicates: bool = True,
    month_window_days: Annotated[int | None, Field(ge=0, le=31)] = None,
    learning_rate: Annotated[float | None, Field(gt=0)] = None,
    max_depth: Annotated[int | None, Field(ge=1, le=64)] = None,
    min_child_weight: Annotated[float | None, Field(ge=0)] = None,
    reg_alpha: Annotated[float | None, Field(ge=0)] = None,
    reg_lambda: Annotated[float | None, Field(ge=0)] = None,
    seed: int | None = None,
    num_boost_round: Annotated[int | None, Field(ge=1, le=10000)] = None,
    early_stopping_rounds: Annotated[int | None, Field(ge=0)] = None,
    experiment_name: str | None = None,
    model_name: str | None = None,
    tlc_base_url: str | None = None,
    s3_block: str | None = None,
    promote: Literal["auto", "never", "force"] = "auto",
    promotion_margin: Annotated[float, Field(ge=0, le=60)] = 0.0,
    promotion_reason: Annotated[str | None, Field(max_length=500)] = None,
    notify: Annotated[list[str] | None, Field(description="notification targets: webhook:<block>, email:<block>:<to> (default: TAXIFLOW_NOTIFY_TARGETS)")] = None,
) -> dict:
    """Train a trip-duration model on one month, validate on a later one, register it in MLflow."""
    started = time.perf_counter()
    exit_with_worker()
    settings = load_settings()
    train_m, val_m = parse_month_pair(train_month, val_month)
    feature_set = parse_features(features)
    check_fields_available(taxi, required_columns(feature_set), what="features")
    params = XGBoostParams().with_overrides(
        learning_rate=learning_rate, max_depth=max_depth, min_child_weight=min_child_weight, reg_alpha=reg_alpha,
        reg_lambda=reg_lambda, seed=seed, num_boost_round=num_boost_round, early_stopping_rounds=early_stopping_rounds,
    )
    directory = str(Path(data_dir) if data_dir else settings.data_dir)
    model_name = model_name or settings.model_name
    store = TrackingStore(
        settings.resolved_tracking_uri(), experiment_name or settings.experiment_name,
        local_artifact_root=settings.local_artifact_root(), retry_budget_s=settings.tracking_retry_s,
    )
    check_tracking_store(store, model_name)
    # For the report's RMSE by borough; fetched alongside the months, never failing the run.
    lookup_source = month_source(source, settings, tlc_base_url, s3_block) if source in ("auto", "tlc") else None
    zones = get_zone_boroughs.submit(directory if source in ("auto", "local") else None, lookup_source, str(settings.cache_dir()))

    # Both months are fetched and prepared concurrently (I/O and decoding overlap).
    files = [get_month.submit(taxi, str(m), source, directory, tlc_base_url, s3_block) for m in (train_m, val_m)]
    prepared_futures = [prepare_month.submit(f, feature_set, month_window_days) for f in files]
    train_file, val_file = (f.result() for f in files)
    train_trips, val_trips = (p.result() for p in prepared_futures)

    # XGBoost can never split on a category rarer than min_child_weight: leaving it out is exact.
    applied_min_count = vocabulary_min_count(model, params, min_count)
    vocabulary = fit_feature_vocabulary(train_trips, feature_set, applied_min_count)
    # Fitting sees duplicate rows collapsed into weighted ones (exact for squared error, fewer rows);
    # the reported metrics cover every validation row.
    collapse = fits_collapsed_rows(model, collapse_duplicates)
    x_train = build_features.submit(train_trips, vocabulary, "train", collapse, model)
    x_val = build_features.submit(val_trips, vocabulary, "val", collapse, model)
    x_train, x_val = x_train.result(), x_val.result()
    fit_started = time.perf_counter()
    fitted = fit_model(model, x_train, x_val, params)
    fit_seconds = time.perf_counter() - fit_started
    metrics = evaluate_model(fitted, val_trips, vocabulary)
    facts = TrainingFacts(
        taxi=taxi,
        model=model,
        features=feature_set,
        train=_month_facts(train_file, train_trips),
        val=_month_facts(val_file, val_trips),
        n_features=vocabulary.size,
        n_features_pruned=vocabulary.pruned,
        rmse=metrics.rmse,
        mae=metrics.mae,
        model_params=asdict(params) if model == "xgboost" else {},
        options={"min_count": min_count, "min_count_applied": applied_min_count, "collapse_duplicates": collapse_duplicates, "collapse_applied": collapse, "month_window_days": month_window_days},
        intercept=fitted.intercept if isinstance(fitted, LinearModel) else None,
        best_iteration=fitted.best_iteration if isinstance(fitted, XGBoostModel) else None,
    )
    publish_data_quality(facts)
    # The commit point is the end of `commit_with_decision`: the version is usable (and may become
    # champion) only once everything it promises (gate, report) exists. Any failure before that
    # deletes it and moves no alias; a kill leaves it tagged pending, without aliases.
    logged = log_model_run(store, facts, fitted, vocabulary)
    registry = ModelRegistry(store, model_name)
    registered, gate = None, None
    try:
        registered = register_model_version(store, facts, logged, model_name)
        links = registry_links(store, registered)
        with promotion_lock(settings.state_dir.resolve(), store.tracking_uri, model_name):
            gate = evaluate_gate(registry, registered, fitted, vocabulary, val_trips, facts, promote, promotion_margin, promotion_reason)
            plots = publish_evaluation_report(store, registered, fitted, vocabulary, val_trips, gate, zones.result())
            publish_promotion_decision(gate, registered, facts.val.month)
            publish_report(facts, registered, gate, links, plots)
            commit_with_decision(store, registry, registered, gate, facts.val.month)
    except BaseException:
        if registered is not None:
            abandon_version(store, registry, logged[1], registered, gate)
        else:
            store.abandon(logged[1], None)
        raise
    decision = gate.decision
    notify_outcome(
        LifecycleEvent(
            kind="promoted" if decision.promote else "completed", taxi=taxi, train_month=train_month, val_month=val_month,
            model_name=model_name, rmse=facts.rmse, challenger_version=registered.model_version,
            champion_version=decision.champion_version, champion_rmse_on_val=decision.champion_rmse,
            gate=decision.outcome, gate_reason=decision.reason, flow_run_name=flow_run.get_name(),
            flow_run_url=current_flow_run_url(), model_version_url=mlflow_version_url(store.tracking_uri, model_name, registered.model_version),
        ),
        notify if notify is not None else settings.notify_targets.split(),
    )
    summary = training_summary(facts, registered, redact_uri(store.tracking_uri), decision)
    # Where the time went (the fit task alone varies by seconds between identical runs).
    return summary | {"seconds": {"flow": time.perf_counter() - started, "fit": fit_seconds}}
