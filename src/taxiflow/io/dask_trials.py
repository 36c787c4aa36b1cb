"""A tune's trials fitted on a Dask cluster: each trial one fit on one worker, pruned from here.

The feature matrices go to the workers once (`share_fit_inputs`), not once per trial. The study
stays in this process (its storage need not be reachable from the workers): a trial's fit sends
each round's validation RMSE back through a Dask queue, this process reports it to the study, and
when the study prunes the trial it sets the trial's Dask event, which the fit checks after every
round. A pruned fit may so run a round or two past the round that pruned it; its curve is cut there.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from taxiflow.core.training import DurationModel
from taxiflow.core.training_plan import FitMatrix, TrainingPlan, fit_duration_model

if TYPE_CHECKING:
    from distributed import Client

POLL_S = 0.5


def share_fit_inputs(client, x_train: FitMatrix, x_val: FitMatrix) -> tuple[object, object]:
    """The matrices on every worker (futures): each trial's fit reads them where it runs."""
    return client.scatter(x_train, broadcast=True), client.scatter(x_val, broadcast=True)


def _fit_on_worker(plan: TrainingPlan, x_train: FitMatrix, x_val: FitMatrix, queue_name: str, event_name: str) -> DurationModel:
    from distributed import Event, Queue, get_worker

    from taxiflow.io.tuning import pruning_callback

    rounds, stop = Queue(queue_name), Event(event_name)

    def report(step: int, value: float) -> bool:
        rounds.put((step, value))
        return stop.is_set()

    # All of this worker's threads: it runs one fit at a time.
    plan = replace(plan, params=plan.params.with_overrides(nthread=get_worker().state.nthreads))
    return fit_duration_model(plan, x_train, x_val, callbacks=[pruning_callback(report, [])])


def fit_trial_on_cluster(client, plan: TrainingPlan, inputs: tuple[object, object], report: Callable[[int, float], bool], pruned: list[bool]) -> DurationModel:
    """`fit_duration_model(plan, ...)` on a worker; `report(round, validation RMSE)` here for each round, True stopping the fit (`pruned` then holds True)."""
    from distributed import Event, Queue

    name = f"taxiflow-trial-{uuid.uuid4().hex}"
    rounds, stop = Queue(f"{name}-rounds", client=client), Event(f"{name}-stop", client=client)
    future = client.submit(_fit_on_worker, plan, *inputs, rounds.name, stop.name, pure=False)
    stopped = False
    try:
        while True:
            try:
                step, value = rounds.get(timeout=POLL_S)
            except TimeoutError:
                if future.done() and rounds.qsize() == 0:
                    break
                continue
            if stopped:
                continue  # rounds the fit ran before it saw the event are not reported
            if report(step, value):
                stop.set()
                stopped = True
                pruned.append(True)
        return future.result()
    finally:
        future.cancel()


@contextlib.contextmanager
def trial_cluster(address: str | None, x_train: FitMatrix, x_val: FitMatrix) -> Iterator[tuple[Client, tuple[object, object], int] | None]:
    """(a client of the scheduler at `address`, the matrices shared on its workers, threads per worker); None without an address."""
    if address is None:
        yield None
        return
    from taxiflow.io.dask_cluster import dask_client

    with dask_client(address) as (client, _):
        threads = min(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        yield client, share_fit_inputs(client, x_train, x_val), threads
