"""The `tune` flow: get and prepare both months once -> build the feature matrices once -> trials on a
thread pool (each a task: one XGBoost fit, pruned on its validation curve, a nested MLflow run) ->
the best parameters to a params file -> the best trial's parameters trained by the `train` flow (so
its model is registered and gated like any other) -> report.

Wiring and policy only: the search space and study naming are `core.tuning`, the study (Optuna,
stored and resumable) `io.tuning`, every training step `core.training_plan`, as `train` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from taxiflow.core.errors import TaxiflowError
from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.preparation import PreparedTrips
from taxiflow.core.request import TuneRequest, flow_docstring, flow_signature, validated_request
from taxiflow.core.training import XGBoostModel
from taxiflow.core.training_plan import FitMatrix, TrainingPlan, evaluate_duration_model, fit_duration_model, plan_training
from taxiflow.core.tuning import COURSE_SPACE, SearchSpace, TrialOutcome, describe_space, study_name, top_trials
from taxiflow.flows.train import build_features, check_tracking_store, fit_feature_vocabulary, get_months, prepare_training_months
from taxiflow.flows.train import tracking_store as open_tracking_store
from taxiflow.flows.train import train as train_flow
from taxiflow.io.dask_trials import fit_trial_on_cluster, trial_cluster
from taxiflow.io.failpoints import failpoint
from taxiflow.io.memory import release_free_memory
from taxiflow.io.tracking import TrackingStore
from taxiflow.io.tuning import Study, load_search_space, params_path, pruning_callback, storage_url, study_lock, write_params_file
from taxiflow.settings import TaxiflowSettings, load_settings

if TYPE_CHECKING:
    import optuna
    from distributed import Client

TOP_TRIALS_KEY = "tune-top-trials"


class TuningFailedError(TaxiflowError):
    """No trial of the study completed."""


MAX_CONCURRENCY = 8  # TuneRequest's bound


@dataclasses.dataclass(frozen=True)
class TrialInputs:
    """What every trial shares: built once per tune."""

    plan: TrainingPlan
    x_train: FitMatrix
    x_val: FitMatrix
    val: PreparedTrips
    vocabulary: FeatureVocabulary
    nthread: int
    # With a Dask scheduler: its client, the matrices on its workers (`io.dask_trials`).
    cluster: tuple[Client, tuple[object, object]] | None = None


@task(task_run_name="trial-{number}", cache_policy=NO_CACHE)
def run_trial(
    number: int, params: dict, inputs: TrialInputs, study: Study, trial: optuna.trial.Trial, store: TrackingStore, experiment_id: str, parent_run_id: str
) -> TrialOutcome:
    """One fit with these parameters, reported round by round (the study may prune it), as a nested MLflow run."""
    started = time.perf_counter()
    tags = {"mlflow.parentRunId": parent_run_id, "taxiflow.tune.study": study.name, "taxiflow.tune.trial": str(number)}
    run_id = store.start_run(experiment_id, run_name=f"trial-{number}", tags=tags)
    study.set_attr(trial, "mlflow_run_id", run_id)
    # Named as `train` names them (xgb_<parameter>): trials and trained versions compare side by side in MLflow.
    store.log_params(run_id, {f"xgb_{k}": str(v) for k, v in params.items()} | {"xgb_nthread": str(inputs.nthread)})
    curve: list[float] = []
    pruned: list[bool] = []
    report = study.reporter(trial)

    def record(step: int, value: float) -> bool:
        curve.append(value)
        return report(step, value)

    try:
        plan = dataclasses.replace(inputs.plan, params=inputs.plan.params.with_overrides(**params, nthread=inputs.nthread))
        if inputs.cluster is not None:
            model = fit_trial_on_cluster(inputs.cluster[0], plan, inputs.cluster[1], record, pruned)
        else:
            model = fit_duration_model(plan, inputs.x_train, inputs.x_val, callbacks=[pruning_callback(record, pruned)])
        failpoint("tune-trial")
        best = model.best_iteration if isinstance(model, XGBoostModel) else None
        if pruned:
            outcome = TrialOutcome(number, "pruned", params, None, best, len(curve), time.perf_counter() - started, run_id)
        else:
            rmse = evaluate_duration_model(model, inputs.val, inputs.vocabulary).metrics.rmse
            outcome = TrialOutcome(number, "complete", params, rmse, best, len(curve), time.perf_counter() - started, run_id)
        store.log_metric_steps(run_id, "validation_rmse_per_round", curve)
        store.log_metrics(run_id, {"rmse": outcome.rmse} if outcome.rmse is not None else {})
        store.set_tags(run_id, {"taxiflow.tune.state": outcome.state})
        store.terminate(run_id, "FINISHED" if outcome.state == "complete" else "KILLED")
    except Exception as exc:  # noqa: BLE001 - a failed trial is the trial's outcome; the search goes on
        error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        outcome = TrialOutcome(number, "failed", params, None, None, len(curve), time.perf_counter() - started, run_id, error)
        store.terminate(run_id, "FAILED")
    finally:
        release_free_memory()
    study.set_attr(trial, "rounds", outcome.rounds)
    study.set_attr(trial, "best_iteration", outcome.best_iteration)
    if outcome.error:
        study.set_attr(trial, "error", outcome.error)
    study.tell(trial, outcome)  # here, not when the flow gets to it: the stored study is what a resumed tune trusts
    shown = f"RMSE {outcome.rmse:.4f}" if outcome.rmse is not None else outcome.error or f"stopped at round {outcome.rounds}"
    get_run_logger().info("trial %d %s in %.1f s: %s; %s", number, outcome.state, outcome.seconds, shown, _params_text(params))
    return outcome


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


@task(cache_policy=NO_CACHE)
def publish_tuning(store: TrackingStore, parent_run_id: str, study: Study, outcomes: list[TrialOutcome], best_file: Path | None) -> None:
    """The parent run's plots, trials table and best parameters; the Prefect table of the top trials."""
    top = top_trials(outcomes)
    rows = [{"trial": o.number, "rmse": round(o.rmse or 0, 4), "best_iteration": o.best_iteration, "seconds": round(o.seconds, 1), **o.params} for o in top]
    create_table_artifact(key=TOP_TRIALS_KEY, table=rows, description=f"Study {study.name}: the best {len(rows)} of {len(outcomes)} trial(s)")
    with tempfile.TemporaryDirectory(prefix="taxiflow-tune-") as tmp:
        for plot in study.plot(Path(tmp)):
            store.log_artifact_file(parent_run_id, plot)
        table = Path(tmp) / "trials.json"
        table.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2))
        store.log_artifact_file(parent_run_id, table)
    if best_file is not None:
        store.log_artifact_file(parent_run_id, best_file)
    counts = {state: sum(o.state == state for o in outcomes) for state in ("complete", "pruned", "failed")}
    store.log_metrics(parent_run_id, {f"trials_{k}": v for k, v in counts.items()} | ({"best_rmse": top[0].rmse} if top and top[0].rmse else {}))


def _tune(**parameters: object) -> dict:
    request = validated_request(TuneRequest, parameters)
    return run_tuning(request, load_settings())


def run_tuning(request: TuneRequest, settings: TaxiflowSettings) -> dict:
    started = time.perf_counter()
    logger = get_run_logger()
    space = load_search_space(request.space_file) if request.space_file else COURSE_SPACE
    base = request.trial_request(space)
    plan = plan_training(base)
    store = open_tracking_store(settings, base.experiment_name)
    check_tracking_store(store, base.model_name or settings.model_name)

    # The months fetched and prepared once (prepared trips come from the cache when `train` saw them before).
    files = get_months(base, settings, (*base.train_months, base.val_month))
    data = prepare_training_months(plan, base.train_month, files, settings, base.refresh)
    train_trips, val_trips = data.train, data.val
    vocabulary = fit_feature_vocabulary(plan, train_trips)
    x_train, x_val = (build_features(plan, trips, vocabulary, name) for trips, name in ((train_trips, "train"), (val_trips, "val")))
    # Concurrent fits share the cores rather than each taking all of them.
    inputs = TrialInputs(plan, x_train, x_val, val_trips, vocabulary, nthread=max(1, (os.cpu_count() or 1) // request.max_concurrency))

    name = study_name(
        taxi=base.taxi,
        train_month=base.train_month,
        val_month=base.val_month,
        data=tuple(f.sha256 for f in files),
        setup=plan.identity() | {"sampler_seed": request.sampler_seed, "pruning": request.pruning},
        space=space,
    )
    with study_lock(settings, name), trial_cluster(request.dask_address, x_train, x_val) as cluster:
        if cluster is not None:
            client, shared, threads = cluster
            inputs = dataclasses.replace(inputs, cluster=(client, shared), nthread=threads)
            logger.info("trials fit on Dask: %d worker(s) at %s, %d thread(s) each", len(client.scheduler_info()["workers"]), request.dask_address, threads)
        study = Study(storage_url(settings), name, sampler_seed=request.sampler_seed, pruning=request.pruning)
        # Holding the study's lock: whatever of it is still running was left by a tune that died.
        interrupted = study.recover_interrupted(space)
        experiment_id = store.experiment_id()
        # Their MLflow runs say so too: the dead tune's parent and trials still RUNNING, and any trial's
        # run that finished in the instant before its trial was told.
        stale_runs = {t.user_attrs["mlflow_run_id"] for t in interrupted if "mlflow_run_id" in t.user_attrs}
        for run_id in stale_runs | set(store.running_runs_tagged(experiment_id, "taxiflow.tune.study", name)):
            store.terminate(run_id, "KILLED")
        done_before = study.finished()
        if interrupted or done_before:
            logger.info("study %s: %d trial(s) finished before; %d interrupted, queued again", name, done_before, len(interrupted))
        parent_tags = {"taxiflow.tune.study": name, "taxiflow.tune.space": json.dumps(describe_space(space))}
        parent_run_id = store.start_run(experiment_id, run_name=f"tune-{base.taxi}-{base.train_month}-{base.val_month}", tags=parent_tags)
        try:
            new = _search(request, study, space, inputs, store, experiment_id, parent_run_id, done_before, started)
            outcomes = study.outcomes()
            best = top_trials(outcomes, 1)
            best_file = None
            if not best:
                errors = sorted({o.error for o in outcomes if o.error})
                raise TuningFailedError(f"study {name}: no trial completed" + (f"; trials failed with: {'; '.join(errors[:3])}" if errors else ""))
            if best:
                provenance = {
                    "study": name,
                    "trial": best[0].number,
                    "rmse": best[0].rmse,
                    "taxi": base.taxi,
                    "train_month": base.train_month,
                    "val_month": base.val_month,
                    "mlflow_run_id": parent_run_id,
                }
                best_file = write_params_file(params_path("best", base.taxi, settings), best[0].params, provenance)
                logger.info("best: trial %d, RMSE %.4f: %s -> %s", best[0].number, best[0].rmse, _params_text(best[0].params), best_file)
            publish_tuning(store, parent_run_id, study, outcomes, best_file)
            store.terminate(parent_run_id, "FINISHED")
        except BaseException:
            store.terminate(parent_run_id, "FAILED")
            raise

    summary: dict = {
        "study": name,
        "trials_run_now": new,
        "trials": {state: sum(o.state == state for o in outcomes) for state in ("complete", "pruned", "failed")},
        "top": [dataclasses.asdict(o) for o in top_trials(outcomes, 5)],
        "best_params_file": str(best_file) if best_file else None,
        "mlflow_run_id": parent_run_id,
        "trained": None,
    }
    if best_file is not None and request.train_best:
        # The best parameters go through `train` like any other: registered, gated, reported.
        summary["trained"] = train_flow(**request.best_train_request(str(best_file)).model_dump(exclude_unset=True))
    summary["seconds"] = {"flow": time.perf_counter() - started}
    return summary


def _search(
    request: TuneRequest,
    study: Study,
    space: SearchSpace,
    inputs: TrialInputs,
    store: TrackingStore,
    experiment_id: str,
    parent_run_id: str,
    done_before: int,
    started: float,
) -> int:
    """Ask, fit and tell until the study has `trials` trials that finished or failed (or time is up); at most `max_concurrency` in flight.

    Returns how many trials this tune ran. A failed trial counts (the search never loops on a setup that
    cannot fit); the report says how many failed.
    """
    wanted = request.trials - done_before
    running: dict = {}  # future -> trial
    launched = 0

    def time_left() -> bool:
        return request.timeout_s is None or time.perf_counter() - started < request.timeout_s

    while True:
        while len(running) < request.max_concurrency and launched < wanted and time_left():
            trial, params = study.ask(space)
            future = run_trial.submit(trial.number, params, inputs, study, trial, store, experiment_id, parent_run_id)
            running[future] = trial
            launched += 1
        if not running:
            return launched
        for future in as_completed(list(running)):
            running.pop(future)
            future.result()  # told the study itself
            break  # refill the pool as soon as one slot frees


_tune.__signature__ = flow_signature(TuneRequest)  # type: ignore[attr-defined]
_tune.__doc__ = flow_docstring("Search XGBoost's parameters on a month pair (Optuna, resumable), then train the best through the gate.", TuneRequest)
tune = flow(name="tune", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY))(_tune)  # type: ignore[arg-type]
