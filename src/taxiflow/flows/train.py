"""The `train` flow: check the tracking store -> get each month -> prepare -> build features -> fit ->
evaluate -> log -> register -> gate -> plots and report -> commit -> notify.

Wiring and policy only: each task is one step of `core.training_plan` (pure) or one `io` call;
the flow's parameters are `core.request.TrainRequest`'s fields (one definition for the CLI and
Prefect's run form). Settings are loaded once per run and passed down.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from taxiflow.core.errors import DataFileError, InvalidArgumentError
from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.identity import training_key
from taxiflow.core.messages import DriftEvent, LifecycleEvent
from taxiflow.core.preparation import PreparedTrips, combine_prepared
from taxiflow.core.report import render_training_report
from taxiflow.core.request import TrainRequest, flow_docstring, flow_signature, validated_request
from taxiflow.core.summary import MonthFacts, RegisteredModel, TrainingFacts, combine_month_facts, data_quality_rows, training_summary
from taxiflow.core.training import DurationModel
from taxiflow.core.training_plan import (
    Evaluation,
    FitMatrix,
    TrainingPlan,
    check_dask_plan,
    evaluate_duration_model,
    fit_code_matrix,
    fit_duration_model,
    fit_duration_model_on_dask,
    fit_matrix,
    fit_plan_vocabulary,
    plan_training,
    training_facts,
)
from taxiflow.flows.evaluation_report import get_zone_boroughs, publish_evaluation_report
from taxiflow.flows.gate_order import GATE_TURN
from taxiflow.flows.lifecycle import GateResult, commit_with_decision, evaluate_gate, publish_promotion_decision
from taxiflow.flows.worker_bond import exit_with_worker
from taxiflow.io.failpoints import failpoint
from taxiflow.io.month_cache import MonthCache, TripFile
from taxiflow.io.prepared_months import prepare_trip_file
from taxiflow.io.progress import xgboost_fit_progress
from taxiflow.io.registry import ModelRegistry, promotion_lock
from taxiflow.io.sources import HttpSource, MonthSource, RetryPolicy, S3Source
from taxiflow.io.tracking import SUMMARY_TAG, TrackingStore, mlflow_run_url, mlflow_version_url, redact_uri
from taxiflow.io.trip_files import get_month_file
from taxiflow.io.tuning import load_params_file
from taxiflow.jobs.notify import current_flow_run_url, notify_run_state, send_event
from taxiflow.settings import TaxiflowSettings, load_settings

REPORT_KEY = "duration-model-report"
SQL_IDENTITY_PREFIX = "postgres-load:"  # a month from PostgreSQL is identified by its load, as a file by its sha256
QUALITY_KEY = "data-quality"


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


def month_inputs(request: TrainRequest, settings: TaxiflowSettings) -> tuple[str | None, MonthSource | None, str]:
    """Where a request's months come from: (the data dir it reads in place, the download source, the cache dir).

    Source postgres has neither: its months are read from the database (`get_month_from_sql`).
    """
    directory = request.data_dir or str(settings.data_dir)
    local_dir = directory if request.source in ("auto", "local") else None
    source = None if request.source == "postgres" else month_source(request.source, settings, request.tlc_base_url, request.s3_block)
    return local_dir, source, str(settings.cache_dir())


def _postgres_url(settings: TaxiflowSettings) -> str:
    # From the environment or a Secret block, inside the task that needs it: never a parameter, never logged.
    from taxiflow.io.trips_sql import postgres_url

    return postgres_url(settings.postgres_url, settings.postgres_secret_block)


def sql_month_identity(taxi: str, month: str, settings: TaxiflowSettings) -> str:
    """A loaded month's identity (its load), without reading its rows."""
    from taxiflow.io.trips_sql import loaded_month

    return f"{SQL_IDENTITY_PREFIX}{loaded_month(_postgres_url(settings), taxi, month).load_id}"


@task(task_run_name="get-{taxi}-{month}-from-postgres", cache_policy=NO_CACHE)
def get_month_from_sql(taxi: str, month: str, settings: TaxiflowSettings) -> TripFile:
    """The month's load record: its load id is the month's identity (what caches key on), before any row is read."""
    from taxiflow.io.trips_sql import loaded_month
    from taxiflow.io.trips_sql import month_source as sql_month_name  # imported here: only PostgreSQL runs load the driver

    url = _postgres_url(settings)
    load = loaded_month(url, taxi, month)
    trip_file = TripFile(
        taxi, month, sql_month_name(url, taxi, month), f"{SQL_IDENTITY_PREFIX}{load.load_id}", 0, load.rows, "postgres", None, load.loaded_at.isoformat()
    )
    get_run_logger().info("%s %s: %s (%d rows, load %s of %s)", taxi, month, trip_file.path, load.rows, load.load_id, trip_file.fetched_at)
    return trip_file


def tracking_store(settings: TaxiflowSettings, experiment_name: str | None) -> TrackingStore:
    return TrackingStore(
        settings.resolved_tracking_uri(),
        experiment_name or settings.experiment_name,
        local_artifact_root=settings.local_artifact_root(),
        retry_budget_s=settings.tracking_retry_s,
    )


# Network retries (backoff, jitter, no retry on 404) happen inside the source, per download.
@task(task_run_name="get-{taxi}-{month}", cache_policy=NO_CACHE)
def get_month(taxi: str, month: str, source: MonthSource | None, data_dir: str | None, cache_dir: str) -> TripFile:
    trip_file = get_month_file(taxi, month, data_dir=Path(data_dir) if data_dir else None, source=source, cache=MonthCache(Path(cache_dir)))
    get_run_logger().info("%s %s: %s (%d rows, sha256 %s…, from %s)", taxi, month, trip_file.path, trip_file.num_rows, trip_file.sha256[:12], trip_file.origin)
    return trip_file


def _read_sql_month(trip_file: TripFile) -> Callable[[list[str]], pa.Table]:
    def read(columns: list[str]) -> pa.Table:
        from taxiflow.io.trips_sql import read_month

        table, load = read_month(_postgres_url(load_settings()), trip_file.taxi, trip_file.month, columns)
        if f"{SQL_IDENTITY_PREFIX}{load.load_id}" != trip_file.sha256:
            raise DataFileError(f"{trip_file.path} was reloaded during this run (load {load.load_id}); expected the load it started with: run again")
        return table

    return read


# Prefect's own caching is off: prepared months are cached by identity, as verified parquet (io/prepared_cache.py).
@task(task_run_name="prepare-{trip_file.month}", cache_policy=NO_CACHE)
def prepare_month(
    trip_file: TripFile, features: tuple[str, ...], month_window_days: int | None, prepared_dir: str, refresh: bool
) -> tuple[PreparedTrips, bool]:
    """The month's prepared trips, and whether they came from the cache."""
    read = _read_sql_month(trip_file) if trip_file.origin == "postgres" else None
    prepared, hit, key = prepare_trip_file(trip_file, features, month_window_days, prepared_dir, refresh, read=read)
    get_run_logger().info(
        "%s: kept %d of %d rows; dropped %s (%s)",
        trip_file.month,
        prepared.rows_kept,
        prepared.rows_read,
        prepared.dropped or "none",
        f"prepared trips from the cache, key {key[:12]}" if hit else "prepared now, cached for later runs",
    )
    return prepared, hit


@task(cache_policy=NO_CACHE)
def find_identical_run(store: TrackingStore, model_name: str, key: str) -> dict | None:
    """The summary of a committed version trained on exactly these inputs (before any data is prepared)."""
    summary = store.find_trained(model_name, key)
    if summary is not None:
        get_run_logger().info(
            "%s v%s was trained on identical inputs (MLflow run %s): returning it without training (retrain to train again)",
            summary.get("model_name"),
            summary.get("model_version"),
            summary.get("run_id"),
        )
    return summary


@task(cache_policy=NO_CACHE)
def fit_feature_vocabulary(plan: TrainingPlan, train: PreparedTrips) -> FeatureVocabulary:
    vocabulary = fit_plan_vocabulary(plan, train)
    get_run_logger().info(
        "vocabulary: %d columns from %s (%d categories seen fewer than %d times left out)",
        vocabulary.size,
        ",".join(plan.features),
        vocabulary.pruned,
        plan.min_count_applied,
    )
    return vocabulary


@task(task_run_name="build-features-{name}", cache_policy=NO_CACHE)
def build_features(plan: TrainingPlan, prepared: PreparedTrips, vocabulary: FeatureVocabulary, name: str) -> FitMatrix:
    features = fit_matrix(plan, prepared, vocabulary)
    if plan.collapse:
        get_run_logger().info("%s: %d rows collapsed to %d distinct weighted rows", name, prepared.rows_kept, features.rows)
    return features


def get_months(request: TrainRequest, settings: TaxiflowSettings, months: tuple[str, ...]) -> list[TripFile]:
    """Every month of a run, fetched concurrently: their digests identify the run before anything is prepared."""
    local_dir, source, cache_dir = month_inputs(request, settings)
    if request.source == "postgres":
        futures = [get_month_from_sql.submit(request.taxi, month, settings) for month in months]
    else:
        futures = [get_month.submit(request.taxi, month, source, local_dir, cache_dir) for month in months]
    return [f.result() for f in futures]


def prepare_months(plan: TrainingPlan, files: list[TripFile], settings: TaxiflowSettings, refresh: bool) -> list[tuple[PreparedTrips, bool]]:
    futures = [prepare_month.submit(f, plan.features, plan.month_window_days, str(settings.prepared_dir()), refresh) for f in files]
    return [f.result() for f in futures]


@dataclass(frozen=True)
class TrainingMonths:
    """A run's training rows (one month or a range, as one set) and its validation month, prepared."""

    train: PreparedTrips
    val: PreparedTrips
    train_facts: MonthFacts
    val_facts: MonthFacts
    from_cache: dict[str, bool]


def prepare_training_months(plan: TrainingPlan, label: str, files: list[TripFile], settings: TaxiflowSettings, refresh: bool) -> TrainingMonths:
    """`files`' months prepared (in parallel, through the cache); all but the last are the training set, the last validates."""
    prepared = prepare_months(plan, files, settings, refresh)
    facts = [_month_facts(f, trips) for f, (trips, _) in zip(files, prepared, strict=True)]
    return TrainingMonths(
        train=combine_prepared([trips for trips, _ in prepared[:-1]]),
        val=prepared[-1][0],
        train_facts=combine_month_facts(label, facts[:-1]),
        val_facts=facts[-1],
        from_cache={f.month: hit for f, (_, hit) in zip(files, prepared, strict=True)},
    )


@task(cache_policy=NO_CACHE)
def fit_model_on_dask(
    plan: TrainingPlan, label: str, train_files: list[TripFile], val: PreparedTrips, dask_address: str | None, prepared_dir: str, refresh: bool
) -> tuple[DurationModel, FeatureVocabulary, MonthFacts, dict[str, bool], float]:
    """Training months prepared and encoded on the Dask workers (`io.dask_partitions`), fitted there by xgboost.dask; and the fit's seconds."""
    from taxiflow.io.dask_cluster import dask_client
    from taxiflow.io.dask_partitions import place_training_months

    logger = get_run_logger()
    with dask_client(dask_address) as (client, workers):
        logger.info("fitting on Dask: %d worker(s) at %s", workers, dask_address or "a local cluster")
        placed = place_training_months(client, plan, train_files, prepared_dir, refresh)
        for month in placed.months:
            logger.info(
                "%s: kept %d of %d rows on a worker (%s)",
                month.month,
                month.rows_kept,
                month.rows_read,
                "from the cache" if month.from_cache else "prepared now",
            )
        logger.info("vocabulary: %d columns from %d month(s)' counts", placed.vocabulary.size, len(placed.months))
        val_codes = fit_code_matrix(plan, val, placed.vocabulary, placed.left_out)
        if val_codes is None:
            raise InvalidArgumentError("engine dask fits on zone codes: the validation month's feature columns must hold no nulls (fit with engine local)")
        fit_started = time.perf_counter()
        model = fit_duration_model_on_dask(plan, placed.codes, val_codes, client)
        fit_seconds = time.perf_counter() - fit_started
    facts = [MonthFacts(f.month, f.path, f.sha256, m.rows_read, m.rows_kept, m.dropped) for f, m in zip(train_files, placed.months, strict=True)]
    return model, placed.vocabulary, combine_month_facts(label, facts), {m.month: m.from_cache for m in placed.months}, fit_seconds


@task(cache_policy=NO_CACHE)
def fit_model(plan: TrainingPlan, train: FitMatrix, val: FitMatrix) -> DurationModel:
    callbacks = xgboost_fit_progress(plan.params.num_boost_round) if plan.model == "xgboost" else []
    return fit_duration_model(plan, train, val, callbacks=callbacks)


@task(cache_policy=NO_CACHE)
def evaluate_model(model: DurationModel, val: PreparedTrips, vocabulary: FeatureVocabulary) -> Evaluation:
    evaluation = evaluate_duration_model(model, val, vocabulary)
    get_run_logger().info("validation RMSE %.4f, MAE %.4f", evaluation.metrics.rmse, evaluation.metrics.mae)
    return evaluation


@task(cache_policy=NO_CACHE)
def check_tracking_store(store: TrackingStore, model_name: str) -> str:
    """Before any data is read: a wrong URI or an unwritable store fails in seconds, not after the fit."""
    experiment_id = store.preflight(model_name)
    get_run_logger().info("experiment %r (id %s) ready in MLflow at %s", store.experiment_name, experiment_id, redact_uri(store.tracking_uri))
    return experiment_id


@task(cache_policy=NO_CACHE)
def log_model_run(store: TrackingStore, facts: TrainingFacts, model: DurationModel, vocabulary: FeatureVocabulary) -> tuple[str, str, str]:
    tags = {"taxiflow.prefect_flow_run_id": str(flow_run.get_id() or "")}
    logged = store.log_run(facts, model, vocabulary, run_name=f"{facts.taxi}-{facts.train.month}-{facts.val.month}-{facts.model}", tags=tags)
    get_run_logger().info("logged MLflow run %s", logged[1])
    return logged


@task(cache_policy=NO_CACHE)
def register_model_version(store: TrackingStore, facts: TrainingFacts, logged: tuple[str, str, str], model_name: str, key: str) -> RegisteredModel:
    registered = store.register(facts, *logged, model_name, training_key=key)
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
def notify_outcome(event: LifecycleEvent | DriftEvent, targets: list[str] | None) -> list[str]:
    """After the commit point (or a scoring run's file): best-effort, bounded in time, never failing the run."""
    try:
        deliveries = send_event(event, targets)
    except Exception as exc:  # noqa: BLE001 - send_event promises not to raise; the run's results stand either way
        get_run_logger().warning("notifications not sent: %s", type(exc).__name__)
        return []
    if deliveries:
        get_run_logger().info("notifications: %s", "; ".join(f"{'ok' if d.ok else 'FAILED'} {d.target}" for d in deliveries))
    return [str(d) for d in deliveries]


def _train(**parameters: object) -> dict:
    request = validated_request(TrainRequest, parameters)
    return run_training(request, load_settings())


def run_training(request: TrainRequest, settings: TaxiflowSettings) -> dict:
    started = time.perf_counter()
    exit_with_worker()
    if request.params:
        path, values = load_params_file(request.params, request.taxi, settings)
        request = request.with_params(values)
        get_run_logger().info("XGBoost parameters from %s (options given to this run win): %s", path, values)
    plan = plan_training(request)
    check_dask_plan(plan)
    months = (*request.train_months, request.val_month)
    model_name = request.model_name or settings.model_name
    store = tracking_store(settings, request.experiment_name)
    check_tracking_store(store, model_name)
    local_dir, source, cache_dir = month_inputs(request, settings)
    # For the report's RMSE by borough; fetched alongside the months, never failing the run.
    zones_dir = str(request.data_dir or settings.data_dir) if request.source == "postgres" else local_dir
    zones = get_zone_boroughs.submit(zones_dir, source if isinstance(source, HttpSource) else None, cache_dir)

    files = get_months(request, settings, months)
    key = training_key(request.taxi, months, tuple(f.sha256 for f in files), plan.identity())
    if not request.retrain and (previous := find_identical_run(store, model_name, key)) is not None:
        return previous | {"cached": True, "seconds": {"flow": time.perf_counter() - started, "fit": 0.0}}

    if plan.engine == "dask":
        # The training months are read on the workers; the validation month here (it is evaluated here).
        [(val_trips, val_hit)] = prepare_months(plan, files[-1:], settings, request.refresh)
        fitted, vocabulary, train_facts, from_cache, fit_seconds = fit_model_on_dask(
            plan, request.train_month, files[:-1], val_trips, request.dask_address, str(settings.prepared_dir()), request.refresh
        )
        val_facts, from_cache = _month_facts(files[-1], val_trips), from_cache | {files[-1].month: val_hit}
    else:
        data = prepare_training_months(plan, request.train_month, files, settings, request.refresh)
        val_trips, train_facts, val_facts, from_cache = data.val, data.train_facts, data.val_facts, data.from_cache
        vocabulary = fit_feature_vocabulary(plan, data.train)
        train_matrix = build_features.submit(plan, data.train, vocabulary, "train")
        val_matrix = build_features.submit(plan, val_trips, vocabulary, "val")
        x_train, x_val = train_matrix.result(), val_matrix.result()
        del data, train_matrix  # the prepared training rows are not needed once encoded: not held through the fit
        fit_started = time.perf_counter()
        fitted = fit_model(plan, x_train, x_val)
        fit_seconds = time.perf_counter() - fit_started
        del x_train
    evaluation = evaluate_model(fitted, val_trips, vocabulary)
    facts = training_facts(plan, train_facts, val_facts, vocabulary, fitted, evaluation.metrics)
    publish_data_quality(facts)

    # The commit point is the end of `commit_with_decision`: the version is usable (and may become
    # champion) only once everything it promises (gate, report) exists. Any failure before that
    # deletes it and moves no alias; a kill leaves it tagged pending, without aliases.
    logged = log_model_run(store, facts, fitted, vocabulary)
    registry = ModelRegistry(store, model_name)
    registered, gate = None, None
    try:
        registered = register_model_version(store, facts, logged, model_name, key)
        links = registry_links(store, registered)
        # In a backfill, gates take turns in month order (flows/gate_order.py); else at once.
        with GATE_TURN.get() or contextlib.nullcontext(), promotion_lock(settings.state_dir.resolve(), store.tracking_uri, model_name):
            gate = evaluate_gate(
                registry, registered, fitted, vocabulary, val_trips, facts, request.promote, request.promotion_margin, request.promotion_reason
            )
            plots = publish_evaluation_report(store, registered, evaluation.predictions, val_trips, gate, zones.result())
            publish_promotion_decision(gate, registered, facts.val.month)
            publish_report(facts, registered, gate, links, plots)
            summary = training_summary(facts, registered, redact_uri(store.tracking_uri), gate.decision)
            # The summary is kept on the version: an identical rerun returns it (`find_identical_run`).
            commit_with_decision(store, registry, registered, gate, facts.val.month, {SUMMARY_TAG: json.dumps(summary)})
    except BaseException:
        if registered is not None:
            abandon_version(store, registry, logged[1], registered, gate)
        else:
            store.abandon(logged[1], None)
        raise
    decision = gate.decision
    notify_outcome(
        LifecycleEvent(
            kind="promoted" if decision.promote else "completed",
            taxi=request.taxi,
            train_month=request.train_month,
            val_month=request.val_month,
            model_name=model_name,
            rmse=facts.rmse,
            challenger_version=registered.model_version,
            champion_version=decision.champion_version,
            champion_rmse_on_val=decision.champion_rmse,
            gate=decision.outcome,
            gate_reason=decision.reason,
            flow_run_name=flow_run.get_name(),
            flow_run_url=current_flow_run_url(),
            model_version_url=mlflow_version_url(store.tracking_uri, model_name, registered.model_version),
        ),
        request.notify if request.notify is not None else settings.notify_targets.split(),
    )
    # Where the time went (the fit task alone varies by seconds between identical runs).
    return summary | {
        "cached": False,
        "prepared_from_cache": from_cache,
        "seconds": {"flow": time.perf_counter() - started, "fit": fit_seconds},
    }


# The parameters (and so Prefect's run form) are TrainRequest's fields, flat and typed.
_train.__signature__ = flow_signature(TrainRequest)  # type: ignore[attr-defined]
_train.__doc__ = flow_docstring("Train a trip-duration model on one month, validate on a later one, register it in MLflow, gate it.", TrainRequest)
# Failures and crashes notify through Prefect's state hooks (the success path notifies in the flow).
train = flow(
    name="train",
    log_prints=True,
    on_failure=[notify_run_state],
    on_crashed=[notify_run_state],
    on_cancellation=[notify_run_state],
)(_train)
