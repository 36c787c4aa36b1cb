"""The `score` flow: check the tracking store -> resolve the model -> get the month (and the model's
training month) -> score in row groups into a parquet file, published atomically -> drift check ->
report (Prefect artifact, MLflow run) -> notify on dataset drift.

Wiring only: the streaming and the model's resolution are `jobs.scoring`, the drift tests
`core.drift` (Evidently's defaults, in scipy), the file sinks `io.predictions`. The flow's parameters
are `core.request.ScoreRequest`'s fields (one definition for the CLI and Prefect's run form).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from taxiflow.core.drift import DriftReport, compare_profiles, render_drift_report
from taxiflow.core.errors import TaxiflowError
from taxiflow.core.messages import DriftEvent
from taxiflow.core.preparation import describe_drops
from taxiflow.core.request import ScoreRequest, flow_docstring, flow_signature, validated_request
from taxiflow.flows.train import check_tracking_store, get_month, month_source, notify_outcome
from taxiflow.flows.worker_bond import exit_with_worker
from taxiflow.io.month_cache import TripFile
from taxiflow.io.predictions import S3_OUTPUT, LocalPredictionSink, PredictionSink, S3PredictionSink, predictions_key
from taxiflow.io.registry import ModelRegistry
from taxiflow.io.sources import MonthSource, S3Source
from taxiflow.io.tracking import TrackingStore, mlflow_run_url, redact_uri
from taxiflow.jobs.notify import current_flow_run_url, notify_run_state
from taxiflow.jobs.scoring import ScoredMonth, ScoringModel, load_scoring_model, score_trip_file
from taxiflow.settings import TaxiflowSettings, load_settings

DRIFT_REPORT_KEY = "drift-report"


@task(cache_policy=NO_CACHE)
def load_model(registry: ModelRegistry, version: int | None, taxi: str) -> ScoringModel:
    scoring = load_scoring_model(registry, version, taxi)
    get_run_logger().info(
        "scoring with %s v%s (%s, trained on %s %s, validation RMSE %s)",
        scoring.name,
        scoring.version,
        "champion" if version is None else "as asked",
        scoring.taxi or "?",
        scoring.train_month or "?",
        scoring.tags.get("rmse", "?"),
    )
    return scoring


def prediction_sink(request: ScoreRequest, settings: TaxiflowSettings, version: str) -> PredictionSink:
    key = predictions_key(request.taxi, request.month, version)
    if request.output == S3_OUTPUT:
        bucket = S3Source.from_block(request.s3_block or settings.s3_block).bucket
        return S3PredictionSink(bucket, f"predictions/{key}", version)
    root = Path(request.output) if request.output else settings.state_dir / "predictions"
    return LocalPredictionSink(root.resolve() / key, version)


@task(task_run_name="score-{trip_file.taxi}-{trip_file.month}", cache_policy=NO_CACHE)
def score_month(trip_file: TripFile, scoring: ScoringModel, request: ScoreRequest, settings: TaxiflowSettings) -> tuple[ScoredMonth, str]:
    """Every scorable ride of the month into one predictions file, published only once complete."""
    sink = prediction_sink(request, settings, scoring.version)
    try:
        scored = score_trip_file(trip_file.path, trip_file.taxi, scoring, sink=sink, source=trip_file.path)
        location = sink.commit()
    except BaseException:
        sink.abort()  # the temporary file goes: never a partial predictions file
        raise
    logger = get_run_logger()
    logger.info("scored %d of %d rides in %d batches -> %s", scored.rows_scored, scored.rows_read, scored.batches, location)
    if scored.skipped:
        logger.info("not scored: %s", describe_drops(scored.skipped))
    return scored, location


@task(task_run_name="profile-reference-{trip_file.month}", cache_policy=NO_CACHE)
def profile_reference(trip_file: TripFile, scoring: ScoringModel) -> ScoredMonth:
    """The model's training month, scored the same way (nothing written): the drift check's reference."""
    return score_trip_file(trip_file.path, trip_file.taxi, scoring, sink=None, source=trip_file.path)


@task(cache_policy=NO_CACHE)
def publish_drift_report(markdown: str, description: str) -> str:
    create_markdown_artifact(key=DRIFT_REPORT_KEY, markdown=markdown, description=description)
    return DRIFT_REPORT_KEY


@task(cache_policy=NO_CACHE)
def log_scoring_run(store: TrackingStore, summary: dict, markdown: str, report: DriftReport | None) -> tuple[str, str]:
    """A run of its own in the experiment, tagged with the model version: the drift metrics and report."""
    drift = summary["drift"]
    tags = {
        "taxiflow.kind": "scoring",
        "taxiflow.model_name": summary["model_name"],
        "taxiflow.model_version": summary["model_version"],
        "taxiflow.prefect_flow_run_id": str(flow_run.get_id() or ""),
        "taxiflow.dataset_drift": str(drift.get("dataset_drift", "not-computed")).lower(),
        "taxi": summary["taxi"],
        "month": summary["month"],
        "reference_month": summary["reference_month"] or "",
    }
    params = {
        "taxi": summary["taxi"],
        "month": summary["month"],
        "model_name": summary["model_name"],
        "model_version": summary["model_version"],
        "reference_month": summary["reference_month"] or "",
        "output": summary["output"],
        "drift_threshold": str(summary["drift_threshold"]),
        "file_sha256": summary["file_sha256"],
    }
    metrics: dict[str, float] = {"rows_read": summary["rows_read"], "rows_scored": summary["rows_scored"], "rows_with_actuals": summary["rows_with_actuals"]}
    if report is not None:
        metrics |= report.metrics()
    elif summary["rmse"] is not None:
        metrics["rmse"] = summary["rmse"]
    texts = {"drift/drift_report.md": markdown, "drift/drift_report.json": json.dumps(summary, indent=2)}
    run_name = f"score-{summary['taxi']}-{summary['month']}-v{summary['model_version']}"
    logged = store.log_report_run(run_name=run_name, tags=tags, params=params, metrics=metrics, texts=texts)
    get_run_logger().info("logged the drift report to MLflow run %s", logged[1])
    return logged


def _reference(
    scoring: ScoringModel, request: ScoreRequest, source: MonthSource | None, local_dir: str | None, cache_dir: str
) -> tuple[ScoredMonth | None, str | None]:
    """The training month scored with the same model, or why the drift check has no reference."""
    month, taxi = scoring.reference_month, scoring.taxi or request.taxi
    if not month:
        return None, f"{scoring.name} v{scoring.version} has no train_month tag"
    try:
        trip_file = get_month(taxi, month, source, local_dir, cache_dir)
        return profile_reference(trip_file, scoring), None
    except TaxiflowError as exc:
        get_run_logger().warning("no drift check: the reference month %s %s is not usable: %s", taxi, month, exc)
        return None, f"reference month {taxi} {month} not usable: {exc}"


def _score(**parameters: object) -> dict:
    request = validated_request(ScoreRequest, parameters)
    return run_scoring(request, load_settings())


def run_scoring(request: ScoreRequest, settings: TaxiflowSettings) -> dict:
    started = time.perf_counter()
    exit_with_worker()
    logger = get_run_logger()
    model_name = request.model_name or settings.model_name
    store = TrackingStore(
        settings.resolved_tracking_uri(),
        request.experiment_name or settings.experiment_name,
        local_artifact_root=settings.local_artifact_root(),
        retry_budget_s=settings.tracking_retry_s,
    )
    check_tracking_store(store, model_name)
    # The model first: no champion (or an unknown version) fails before any month is read or file written.
    scoring = load_model(ModelRegistry(store, model_name), request.model_version, request.taxi)
    directory = request.data_dir or str(settings.data_dir)
    local_dir = directory if request.source in ("auto", "local") else None
    source = month_source(request.source, settings, request.tlc_base_url, request.s3_block)
    cache_dir = str(settings.cache_dir())

    trip_file = get_month(request.taxi, request.month, source, local_dir, cache_dir)
    scored, location = score_month(trip_file, scoring, request, settings)
    reference, no_reference = _reference(scoring, request, source, local_dir, cache_dir)

    metrics = scored.metrics
    rmse = metrics.rmse if metrics is not None else None
    reference_label = f"{scoring.taxi or request.taxi} {scoring.reference_month} (v{scoring.version}'s training month)"
    current_label = f"{request.taxi} {request.month}"
    report = None
    if reference is not None:
        report = compare_profiles(
            reference.profile,
            scored.profile,
            reference_label=reference_label,
            current_label=current_label,
            drift_share=request.drift_threshold,
            rmse=rmse,
            reference_rmse=scoring.rmse,
        )
        drift = report.summary()
        logger.info(
            "drift vs %s: %s (%d of %d columns: %s)",
            scoring.reference_month,
            "DATASET DRIFT" if report.dataset_drift else "no dataset drift",
            len(report.drifted_columns),
            len(report.columns),
            ", ".join(f"{c.column} {c.method} {c.score:.4f}" for c in report.columns),
        )
    else:
        drift = {"dataset_drift": None, "not_computed": no_reference}

    summary = {
        "taxi": request.taxi,
        "month": request.month,
        "model_name": scoring.name,
        "model_version": scoring.version,
        "reference_month": scoring.reference_month,
        "rows_read": scored.rows_read,
        "rows_scored": scored.rows_scored,
        "rows_skipped": scored.skipped,
        "rows_with_actuals": scored.rows_with_actuals,
        "rmse": rmse,
        "reference_rmse": scoring.rmse,
        "output": location,
        "file_sha256": trip_file.sha256,
        "drift_threshold": request.drift_threshold,
        "drift": drift,
    }
    heading = f"Drift: {current_label} scored with {scoring.name} v{scoring.version}"
    facts = {
        "rides scored": f"{scored.rows_scored:,} of {scored.rows_read:,}" + (f" (not scored: {describe_drops(scored.skipped)})" if scored.skipped else ""),
        "predictions": f"`{location}`",
    }
    if report is not None:
        markdown = render_drift_report(report, heading=heading, facts=facts)
    else:
        markdown = f"# {heading}\n\nDrift not computed: {no_reference}.\n\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items()) + "\n"
    publish_drift_report(markdown, f"{current_label} v{scoring.version}: " + ("DATASET DRIFT" if report and report.dataset_drift else "no dataset drift"))
    experiment_id, run_id = log_scoring_run(store, summary, markdown, report)
    run_url = mlflow_run_url(store.tracking_uri, experiment_id, run_id)

    notified: list[str] = []
    if report is not None and report.dataset_drift:
        event = DriftEvent(
            taxi=request.taxi,
            month=request.month,
            model_name=scoring.name,
            model_version=scoring.version,
            drifted_columns=report.drifted_columns,
            columns_checked=len(report.columns),
            share_drifted=report.share_drifted,
            drift_share=report.drift_share,
            reference_month=scoring.reference_month,
            rows_scored=scored.rows_scored,
            rmse=rmse,
            reference_rmse=scoring.rmse,
            flow_run_name=flow_run.get_name(),
            flow_run_url=current_flow_run_url(),
            mlflow_run_url=run_url,
        )
        notified = notify_outcome(event, request.notify if request.notify is not None else settings.notify_targets.split())
    return summary | {
        "mlflow_run_id": run_id,
        "tracking_uri": redact_uri(store.tracking_uri),
        "notified": notified,
        "seconds": {"flow": time.perf_counter() - started, **{f"score_{k}": v for k, v in scored.seconds.items()}},
    }


# The parameters (and so Prefect's run form) are ScoreRequest's fields, flat and typed.
_score.__signature__ = flow_signature(ScoreRequest)  # type: ignore[attr-defined]
_score.__doc__ = flow_docstring("Score a month's rides with the champion (or a given version), write the predictions, check drift.", ScoreRequest)
# A failed, crashed or cancelled scoring run tells the same targets a training run does.
score = flow(name="score", log_prints=True, on_failure=[notify_run_state], on_crashed=[notify_run_state], on_cancellation=[notify_run_state])(_score)
