"""The `backfill` flow: one `train` run per consecutive pair of months in a range (deployment `taxi-backfill`).

Plan (which pairs run, and why) -> train the pairs concurrently, each a child `train` flow run, at
most `max_concurrency` at once, their gates in month order -> a table artifact and an MLflow run
with RMSE over the months. A pair that fails fails alone: the others run, and the parent fails
at the end naming it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from taxiflow.core.backfill import (
    FAILED,
    SKIPPED,
    TRAINED,
    UP_TO_DATE,
    BackfillFailedError,
    MonthPair,
    PairFacts,
    PairOutcome,
    PairPlan,
    failure_summary,
    outcome_of_run,
    plan_pair,
)
from taxiflow.core.errors import TaxiflowError
from taxiflow.core.identity import training_key
from taxiflow.core.request import BackfillRequest, TrainRequest, flow_docstring, flow_signature, validated_request
from taxiflow.core.training_plan import plan_training
from taxiflow.flows.gate_order import GATE_TURN, PairOrder
from taxiflow.flows.train import check_tracking_store, month_inputs, sql_month_identity, tracking_store, train
from taxiflow.io.memory import release_free_memory
from taxiflow.io.month_cache import MonthCache
from taxiflow.io.plots import plot_rmse_over_months
from taxiflow.io.prefect_runs import last_run_states, pair_tag
from taxiflow.io.registry import CHAMPION, ModelRegistry
from taxiflow.io.tracking import TrackingStore
from taxiflow.io.trip_files import known_month_file
from taxiflow.settings import TaxiflowSettings, load_settings

TABLE_KEY = "backfill-pairs"
MAX_CONCURRENCY = 8  # the request's bound: the task runner's threads; `PairOrder` admits `max_concurrency` of them


def plan_backfill(request: BackfillRequest, settings: TaxiflowSettings, store: TrackingStore) -> tuple[list[PairPlan], dict[MonthPair, dict]]:
    """Each pair and why it runs or not; and the summaries of identical versions found (pairs up to date).

    Looks only at what is here: months in the data dir or the cache (nothing is downloaded), the
    registry, and (mode failed) Prefect's record of each pair's last run. Changes nothing.
    """
    pairs = request.pairs()
    model_name = request.pair_request(pairs[0]).model_name or settings.model_name
    states = last_run_states([pair_tag(request.taxi, p.train_month, p.val_month) for p in pairs]) if request.mode == "failed" else {}
    first = request.pair_request(pairs[0])
    local_dir, source, cache_dir = month_inputs(first, settings)
    cache = MonthCache(Path(cache_dir))
    months = sorted({m for p in pairs for m in (p.train_month, p.val_month)})
    identities: dict[str, str | None] = {}
    for month in months:
        try:
            if first.source == "postgres":
                identities[month] = sql_month_identity(request.taxi, month, settings)
                continue
            known = known_month_file(request.taxi, month, data_dir=Path(local_dir) if local_dir else None, source=source, cache=cache)
        except TaxiflowError:
            known = None  # unreadable, or not loaded: its pairs run, and fail with its error where the UI shows them
        identities[month] = known.sha256 if known is not None else None
    plans, found = [], {}
    for pair in pairs:
        train_id, val_id = identities[pair.train_month], identities[pair.val_month]
        summary = None
        if train_id is not None and val_id is not None and request.mode == "missing":
            pair_request = request.pair_request(pair)
            key = training_key(request.taxi, (pair.train_month, pair.val_month), (train_id, val_id), plan_training(pair_request).identity())
            summary = store.find_trained(model_name, key)
        if summary is not None:
            found[pair] = summary
        facts = PairFacts(
            identical_version=None if summary is None else str(summary["model_version"]),
            inputs_known=train_id is not None and val_id is not None,
            last_state=states.get(pair_tag(request.taxi, pair.train_month, pair.val_month)),
        )
        plans.append(plan_pair(pair, request.mode, facts))
    return plans, found


@task(task_run_name="plan-backfill", cache_policy=NO_CACHE)
def plan_backfill_task(request: BackfillRequest, settings: TaxiflowSettings, store: TrackingStore) -> tuple[list[PairPlan], dict[MonthPair, dict]]:
    plans, found = plan_backfill(request, settings, store)
    logger = get_run_logger()
    for plan in plans:
        logger.info("%s: %s (%s)", plan.pair, "runs" if plan.run else "skipped", plan.reason)
    return plans, found


@task(task_run_name="pair-{pair.train_month}-{pair.val_month}", cache_policy=NO_CACHE)
def train_pair(request: TrainRequest, pair: MonthPair, k: int, order: PairOrder) -> PairOutcome:
    """Run the pair's `train` flow as a child flow run; its failure is the pair's outcome, not this task's."""
    with order.admitted(k):
        token = GATE_TURN.set(order.gate_turn(k))
        try:
            with tags(pair_tag(request.taxi, pair.train_month, pair.val_month)):
                child = train.with_options(flow_run_name=f"train-{request.taxi}-{pair.train_month}-{pair.val_month}")
                summary = child(**request.model_dump(exclude_unset=True))
            return outcome_of_run(pair, summary)
        except Exception as exc:  # noqa: BLE001 - the child run failed with this; its own log and hooks have the details
            reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
            get_run_logger().error("%s failed: %s", pair, reason)
            return PairOutcome(pair, FAILED, detail=reason)
        finally:
            GATE_TURN.reset(token)
            order.end(k)
            release_free_memory()  # the pair's months, matrices and model are garbage now: keep memory flat over pairs


@task(cache_policy=NO_CACHE)
def publish_backfill(store: TrackingStore, request: BackfillRequest, outcomes: list[PairOutcome], champion: str | None) -> str | None:
    """The table artifact, and an MLflow run with the table, the pair counts and a plot of RMSE over the months."""
    rows = [o.row() for o in outcomes]
    span = f"{request.taxi} {request.from_month}..{request.to_month}"
    create_table_artifact(key=TABLE_KEY, table=rows, description=f"Backfill {span} (mode {request.mode}): champion at the end v{champion or '-'}")
    trained = [o for o in outcomes if o.rmse is not None]
    if not trained:
        return None
    markdown = "| pair | status | RMSE | version | promoted | detail |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {r['pair']} | {r['status']} | {r['rmse'] if r['rmse'] is not None else ''} | {r['version']} | {'yes' if r['promoted'] else ''} | {r['detail']} |"
        for r in rows
    )
    _, run_id = store.log_report_run(
        run_name=f"backfill-{request.taxi}-{request.from_month}-{request.to_month}",
        tags={"taxiflow.kind": "backfill"},
        params={"taxi": request.taxi, "from_month": request.from_month, "to_month": request.to_month, "mode": request.mode},
        metrics={f"pairs_{status.replace(' ', '_')}": sum(o.status == status for o in outcomes) for status in (TRAINED, UP_TO_DATE, FAILED, SKIPPED)},
        texts={"backfill.md": markdown, "backfill.json": json.dumps(rows, indent=1)},
    )
    with tempfile.TemporaryDirectory(prefix="taxiflow-backfill-") as tmp:
        plot = plot_rmse_over_months(
            [(o.pair.val_month, o.rmse, o.promoted) for o in trained if o.rmse is not None],
            Path(tmp) / "rmse_over_months.png",
            title=f"Validation RMSE, {span}",
        )
        store.log_artifact_file(run_id, plot)
    get_run_logger().info("backfill report: MLflow run %s (rmse_over_months.png, backfill.md)", run_id)
    return run_id


def _backfill(**parameters: object) -> dict:
    request = validated_request(BackfillRequest, parameters)
    return run_backfill(request, load_settings())


def run_backfill(request: BackfillRequest, settings: TaxiflowSettings) -> dict:
    options = request.pair_request(request.pairs()[0])  # the training options every pair shares
    model_name = options.model_name or settings.model_name
    store = tracking_store(settings, options.experiment_name)
    check_tracking_store(store, model_name)
    plans, found = plan_backfill_task(request, settings, store)
    if request.dry_run:
        return {"dry_run": True, "plan": [{"pair": str(p.pair), "runs": p.run, "reason": p.reason} for p in plans]}
    to_run = [p for p in plans if p.run]
    order = PairOrder(len(to_run), request.max_concurrency)
    # Submitted in month order: the task runner starts them in that order, `order` admits and gates them in it.
    futures = {p.pair: train_pair.submit(request.pair_request(p.pair, retrain=request.mode == "all"), p.pair, k, order) for k, p in enumerate(to_run)}
    outcomes = []
    for plan in plans:
        if plan.run:
            outcomes.append(futures[plan.pair].result())
        elif plan.pair in found:
            outcomes.append(outcome_of_run(plan.pair, found[plan.pair] | {"cached": True}))
        else:
            outcomes.append(PairOutcome(plan.pair, SKIPPED, detail=plan.reason))
    champion = ModelRegistry(store, model_name).version_by_alias(CHAMPION)
    champion_version = str(champion.version) if champion is not None else None
    report_run = publish_backfill(store, request, outcomes, champion_version)
    result = {
        "taxi": request.taxi,
        "from_month": request.from_month,
        "to_month": request.to_month,
        "mode": request.mode,
        "pairs": [o.row() for o in outcomes],
        "champion_version": champion_version,
        "report_run_id": report_run,
    }
    if (failed := failure_summary(outcomes)) is not None:
        raise BackfillFailedError(failed, result)
    get_run_logger().info(
        "backfill done: %d trained, %d up to date, %d skipped; champion v%s",
        sum(o.status not in (UP_TO_DATE, SKIPPED) for o in outcomes),
        sum(o.status == UP_TO_DATE for o in outcomes),
        sum(o.status == SKIPPED for o in outcomes),
        champion_version,
    )
    return result


_backfill.__signature__ = flow_signature(BackfillRequest)  # type: ignore[attr-defined]
_backfill.__doc__ = flow_docstring("Train every consecutive pair of months in a range (train on M, validate on M+1), gated in month order.", BackfillRequest)
# Prefect's annotation of `task_runner` doesn't accept its own ThreadPoolTaskRunner instance.
backfill = flow(name="backfill", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY))(_backfill)  # type: ignore[arg-type]
