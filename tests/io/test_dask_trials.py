"""A tune's trial fitted on a Dask worker: each round's validation RMSE reported here, the fit stopped from here when pruned."""

import os

import pytest

from taxiflow.core.preparation import prepare_trips
from taxiflow.core.request import TrainRequest
from taxiflow.core.schema import layout_for
from taxiflow.core.training_plan import fit_duration_model, fit_matrix, fit_plan_vocabulary, plan_training
from taxiflow.io.dask_cluster import dask_client
from taxiflow.io.dask_trials import fit_trial_on_cluster, share_fit_inputs
from taxiflow.io.prepared_months import prepared_columns
from taxiflow.io.trip_tables import read_trip_table
from taxiflow.io.tuning import pruning_callback

ROUNDS = 25


@pytest.fixture(scope="module")
def matrices(tlc_dir):
    plan = plan_training(TrainRequest(train_month="2023-01", val_month="2023-02", num_boost_round=ROUNDS, early_stopping_rounds=0))
    train, val = (
        prepare_trips(read_trip_table(str(path), layout_for("green"), prepared_columns(plan.features)), source=str(path))
        for path in (tlc_dir / "green_tripdata_2023-01.parquet", tlc_dir / "green_tripdata_2023-02.parquet")
    )
    vocabulary = fit_plan_vocabulary(plan, train)
    return plan, fit_matrix(plan, train, vocabulary), fit_matrix(plan, val, vocabulary)


def test_a_trial_on_a_worker_reports_every_round_here_and_stops_when_pruned(matrices):
    plan, x_train, x_val = matrices
    local_curve: list[float] = []
    fit_duration_model(plan, x_train, x_val, callbacks=[pruning_callback(lambda step, value: local_curve.append(value) or False, [])])
    environment = dict(os.environ)
    with dask_client(None) as (client, _):
        # Dask's Nanny sets its workers' OMP/OPENBLAS_NUM_THREADS=1 here before spawning them: not left for what this process starts.
        assert dict(os.environ) == environment
        shared = share_fit_inputs(client, x_train, x_val)
        seen: list[tuple[int, float]] = []
        pruned: list[bool] = []
        full = fit_trial_on_cluster(client, plan, shared, lambda step, value: seen.append((step, value)) or False, pruned)
        assert [step for step, _ in seen] == list(range(ROUNDS)) and pruned == [] and full.booster.num_boosted_rounds() == ROUNDS
        assert [value for _, value in seen] == pytest.approx(local_curve, rel=1e-6), "the worker's curve is the one fitted here"

        reported: list[int] = []
        pruned = []
        stopped = fit_trial_on_cluster(client, plan, shared, lambda step, value: reported.append(step) or step >= 4, pruned)
        # Reported up to the round that pruned it; the fit saw the event a round or two later at most.
        assert reported == [0, 1, 2, 3, 4] and pruned == [True]
        assert 5 <= stopped.booster.num_boosted_rounds() < ROUNDS
    assert dict(os.environ) == environment
