"""`taxiflow train --engine dask`: XGBoost fitted by xgboost.dask, on a LocalCluster or on a real scheduler and
workers started here (`dask scheduler`, `dask worker` on 127.0.0.1), registered and gated like any model."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import registered_versions
from tests.support.servers import VENV_BIN, base_env, free_port

PAIR = ("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "20", "--json")


@pytest.fixture
def dask_scheduler(tmp_path):
    """A Dask scheduler with two single-threaded worker processes, as a cluster would run them (on 127.0.0.1)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    commands = (
        [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        [str(VENV_BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
    )
    processes = []
    try:
        for name, command in zip(("scheduler", "workers"), commands, strict=True):
            with open(tmp_path / f"dask-{name}.log", "wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=base_env(), start_new_session=True))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_a_dask_fit_is_the_local_model_registered_and_gated_like_any(tlc_dir, state_dir, run_taxiflow, dask_scheduler):
    env = {"TAXIFLOW_DATA_DIR": str(tlc_dir)}
    local = run_taxiflow(*PAIR, env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    on_local_cluster = run_taxiflow(*PAIR, "--engine", "dask", env=env)
    assert on_local_cluster.returncode == 0, on_local_cluster.stderr[-3000:]
    assert "fitting on Dask: 2 worker(s) at a local cluster" in on_local_cluster.stderr
    # Where it fits is not part of a model's identity (its engine is): the same inputs on another cluster would be returned cached.
    on_scheduler = run_taxiflow(*PAIR, "--engine", "dask", "--dask-address", dask_scheduler, "--retrain", env=env)
    assert on_scheduler.returncode == 0, on_scheduler.stderr[-3000:]
    assert f"fitting on Dask: 2 worker(s) at {dask_scheduler}" in on_scheduler.stderr

    summaries = [r.json() for r in (local, on_local_cluster, on_scheduler)]
    for summary in summaries[1:]:
        assert abs(summary["rmse"] - summaries[0]["rmse"]) <= 0.02 and summary["rows_train"] == summaries[0]["rows_train"]
        assert summary["gate"] in ("promoted", "kept") and not summary["cached"]  # a Dask fit is not the local run's identity
    assert registered_versions(state_dir) == ["3", "2", "1"]
    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    engines = [client.get_run(s["run_id"]).data.params["engine"] for s in summaries]
    assert engines == ["local", "dask", "dask"]


def test_dask_mistakes_fail_before_a_model_exists(tlc_dir, state_dir, run_taxiflow):
    env = {"TAXIFLOW_DATA_DIR": str(tlc_dir)}
    linear = run_taxiflow(*PAIR, "--engine", "dask", "--model", "linear", env=env)
    assert linear.returncode == 2 and "--engine dask fits XGBoost (xgboost.dask): model linear fits in this process; use engine local" in linear.stderr, (
        linear.stderr
    )
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    unreachable = run_taxiflow(*PAIR, "--engine", "dask", "--dask-address", address, env=env)
    assert unreachable.returncode == 1 and f"Dask scheduler {address} did not answer within 10 s" in unreachable.stderr, unreachable.stderr[-2000:]
    assert registered_versions(state_dir) == []


RANGE = ("train", "--taxi", "green", "--train-months", "2023-01..2023-02", "--val-month", "2023-03", "--num-boost-round", "20", "--json")


def test_a_range_of_months_trains_as_one_set_in_process_and_as_partitions_on_dask(tlc_dir, state_dir, run_taxiflow):
    env = {"TAXIFLOW_DATA_DIR": str(tlc_dir)}
    local = run_taxiflow(*RANGE, env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    on_dask = run_taxiflow(*RANGE, "--engine", "dask", env=env)
    assert on_dask.returncode == 0, on_dask.stderr[-3000:]
    # Each training month was prepared on a worker (from the prepared cache the local run filled).
    for month in ("2023-01", "2023-02"):
        assert f"{month}: kept " in on_dask.stderr and "rows on a worker (from the cache)" in on_dask.stderr, on_dask.stderr[-3000:]
    first, second = local.json(), on_dask.json()
    rows_in_files = sum(pq.ParquetFile(tlc_dir / f"green_tripdata_{m}.parquet").metadata.num_rows for m in ("2023-01", "2023-02"))
    for summary in (first, second):
        assert summary["train_month"] == "2023-01..2023-02" and summary["val_month"] == "2023-03"
        assert summary["rows_train_read"] == rows_in_files > summary["rows_train"] > rows_in_files * 0.9
    assert second["rows_train"] == first["rows_train"]
    assert abs(second["rmse"] - first["rmse"]) <= 0.02
    assert first["prepared_from_cache"] == {"2023-01": False, "2023-02": False, "2023-03": False}
    assert second["prepared_from_cache"] == {"2023-01": True, "2023-02": True, "2023-03": True}
    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    params = client.get_run(second["run_id"]).data.params
    assert params["train_file"] == "green_tripdata_2023-01.parquet; green_tripdata_2023-02.parquet" and params["engine"] == "dask"
    assert registered_versions(state_dir) == ["2", "1"]


def test_a_bad_month_inside_a_range_fails_on_its_worker_naming_it_and_registers_nothing(tlc_dir, state_dir, run_taxiflow, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for month in ("2023-01", "2023-03"):
        (data / f"green_tripdata_{month}.parquet").symlink_to(tlc_dir / f"green_tripdata_{month}.parquet")
    # A readable file of the wrong month: only preparing it (on a worker) finds out.
    (data / "green_tripdata_2023-02.parquet").symlink_to(tlc_dir / "green_tripdata_2021-02.parquet")
    result = run_taxiflow(*RANGE, "--engine", "dask", "--source", "local", env={"TAXIFLOW_DATA_DIR": str(data)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "green_tripdata_2023-02.parquet" in result.stderr and "2021-02" in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert registered_versions(state_dir) == []


def test_tune_fits_its_trials_on_a_dask_scheduler_with_nested_runs_here(tlc_dir, state_dir, run_taxiflow, dask_scheduler):
    tune = ("tune", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "6", "--trials", "3")
    result = run_taxiflow(*tune, "--dask-address", dask_scheduler, "--no-train-best", "--json", env={"TAXIFLOW_DATA_DIR": str(tlc_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trials fit on Dask: 2 worker(s) at {dask_scheduler}, 1 thread(s) each" in result.stderr, result.stderr[-3000:]
    summary = result.json()
    assert summary["trials"] == {"complete": 3, "pruned": 0, "failed": 0} and summary["best_params_file"]
    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    children = client.search_runs([client.get_run(summary["mlflow_run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}'")
    assert len(children) == 3 and all(len(client.get_metric_history(r.info.run_id, "validation_rmse_per_round")) == 6 for r in children)
    assert {r.data.params["xgb_nthread"] for r in children} == {"1"}, "each trial on one single-threaded worker"
