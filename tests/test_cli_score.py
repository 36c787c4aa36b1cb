"""Batch scoring through the real command, a real MLflow tracking server and Prefect server (issue 14).

One model per module (linear, green 2023-01 -> 2023-02, champion v1), trained once: each test scores
with it and states what its run must leave behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from taxiflow.core.features import build_feature_matrix
from taxiflow.core.metrics import regression_metrics
from taxiflow.core.preparation import prepare_trips
from taxiflow.core.schema import CANONICAL_FIELDS, DISTANCE, DROPOFF_ZONE, DURATION, PICKUP_ZONE, TRIP_LAYOUTS
from taxiflow.core.training import predict_trips
from taxiflow.io.registry import ModelRegistry
from taxiflow.io.tracking import TrackingStore
from taxiflow.io.trip_tables import read_trip_table
from tests.conftest import CommandResult
from tests.support.receivers import webhook_receiver
from tests.support.servers import VENV_BIN, base_env, mlflow_server

MODEL = "nyc-taxi-duration"
HOOK = "drift-hook"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def hook():
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def taxiflow(tmp_path_factory, prefect_api, tracking, tlc_dir, hook):
    """`taxiflow ARGS` against the module's servers, once a model is champion and the webhook block is saved."""
    root = tmp_path_factory.mktemp("score")

    def run(*args: str, env: dict[str, str] | None = None) -> CommandResult:
        full_env = base_env(TAXIFLOW_STATE_DIR=str(root / "state"), PREFECT_API_URL=prefect_api) | (env or {})
        proc = subprocess.run([str(VENV_BIN / "taxiflow"), *args], cwd=root, env=full_env, capture_output=True, text=True, timeout=600)
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    trained = run("train", "--train-month", "2023-01", "--val-month", "2023-02", "--model", "linear", "--data-dir", str(tlc_dir), "--tracking-uri", tracking)
    assert trained.returncode == 0, trained.stderr[-3000:]
    saved = run("notify", "webhook", "--name", HOOK, "--allow-private-urls", env={"TAXIFLOW_WEBHOOK_URL": hook.url("/services/drift")})
    assert saved.returncode == 0, saved.stderr[-3000:]
    return run


def score(taxiflow, tlc_dir: Path, tracking: str, *args: str, env: dict[str, str] | None = None) -> CommandResult:
    return taxiflow("score", "--data-dir", str(tlc_dir), "--source", "local", "--tracking-uri", tracking, *args, env=env)


def test_scoring_a_month_writes_every_ride_its_rmse_and_a_drift_report(taxiflow, tlc_dir, tracking, prefect_api, hook, tmp_path):
    posts_before = len(hook.posts)
    result = score(taxiflow, tlc_dir, tracking, "--month", "2023-03", "--output", str(tmp_path / "out"), "--notify", f"webhook:{HOOK}", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    path = tmp_path / "out" / "green" / "2023-03" / "predictions-v1.parquet"
    assert (summary["output"], summary["model_version"], summary["reference_month"]) == (str(path), "1", "2023-01")
    # Every ride of the month has valid zones and a distance: all are scored, 69,392 have a usable actual duration.
    assert (summary["rows_read"], summary["rows_scored"], summary["rows_with_actuals"], summary["rows_skipped"]) == (72_044, 72_044, 69_392, {})

    table = pq.read_table(path)
    assert table.column_names == ["ride_index", "prediction", "model_version"]
    np.testing.assert_array_equal(table.column("ride_index").to_numpy(), np.arange(72_044))
    assert set(table.column("model_version").to_pylist()) == {"1"}
    # The predictions are the registered version's, loaded from its own files, on the file's raw columns.
    model, vocabulary = ModelRegistry(TrackingStore(tracking, "nyc-taxi-experiment"), MODEL).load_version("1")
    raw = pl.read_parquet(tlc_dir / "green_tripdata_2023-03.parquet", columns=["PULocationID", "DOLocationID", "trip_distance"])
    rides = raw.select(
        pl.col("PULocationID").cast(pl.Int32).alias(PICKUP_ZONE),
        pl.col("DOLocationID").cast(pl.Int32).alias(DROPOFF_ZONE),
        pl.col("trip_distance").alias(DISTANCE),
    )
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), model.predict(build_feature_matrix(rides, vocabulary, model.feature_dtype).X))
    # The RMSE is the one validating on the month would report: training's rows (1..60 min), training's evaluation.
    month = prepare_trips(read_trip_table(str(tlc_dir / "green_tripdata_2023-03.parquet"), TRIP_LAYOUTS["green"], list(CANONICAL_FIELDS)), source="2023-03")
    expected = regression_metrics(month.frame[DURATION].to_numpy(), predict_trips(model, month.frame, vocabulary)).rmse
    assert summary["rmse"] == pytest.approx(expected, rel=1e-12) and summary["reference_rmse"] == pytest.approx(6.034462)

    drift = summary["drift"]
    assert drift["dataset_drift"] is False and drift["drifted_columns"] == [] and drift["drift_share"] == 0.5
    assert {name: c["method"] for name, c in drift["columns"].items()} == {
        "trip_distance": "wasserstein",
        "PULocationID": "jensenshannon",
        "DOLocationID": "jensenshannon",
        "prediction": "wasserstein",
    }
    assert summary["notified"] == [] and len(hook.posts) == posts_before  # no dataset drift: nobody is told

    client = MlflowClient(tracking)
    run = client.get_run(summary["mlflow_run_id"])
    assert (run.info.status, run.data.tags["taxiflow.kind"], run.data.tags["taxiflow.model_version"]) == ("FINISHED", "scoring", "1")
    assert run.data.metrics["rows_scored"] == 72_044 and run.data.metrics["rmse"] == pytest.approx(summary["rmse"])
    assert run.data.metrics["drift_score_PULocationID"] == pytest.approx(drift["columns"]["PULocationID"]["score"]) and run.data.metrics["dataset_drift"] == 0
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "drift")) == ["drift/drift_report.json", "drift/drift_report.md"]
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "drift/drift_report.json", str(tmp_path))).read_text())
    assert logged["drift"] == drift

    flow_run_id = run.data.tags["taxiflow.prefect_flow_run_id"]
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).json()
    (report,) = [a["data"] for a in artifacts if a["key"] == "drift-report"]
    assert "**No dataset drift**: 0 of 4 columns drifted" in report and "| trip_distance | numerical | Wasserstein distance (normed) |" in report
    assert f"`{path}`" in report and "RMSE on rides with an actual duration (1-60 min)" in report


def test_dataset_drift_past_the_threshold_notifies_the_targets(taxiflow, tlc_dir, tracking, hook, tmp_path):
    """2021-01's pickups, dropoffs and predictions moved away from 2023-01's: 3 of 4 columns, at an alert share of 0.75."""
    posts_before = len(hook.posts)
    args = ("--month", "2021-01", "--model-version", "1", "--drift-threshold", "0.75", "--output", str(tmp_path), "--json")
    result = score(taxiflow, tlc_dir, tracking, *args, env={"TAXIFLOW_NOTIFY_TARGETS": f"webhook:{HOOK}"})  # the targets from the environment
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    drift = summary["drift"]
    assert drift["dataset_drift"] is True and drift["share_drifted"] == 0.75
    assert drift["drifted_columns"] == ["PULocationID", "DOLocationID", "prediction"]
    assert (tmp_path / "green" / "2021-01" / "predictions-v1.parquet").is_file() and summary["rows_scored"] == 76_518
    (delivery,) = summary["notified"]
    assert delivery.split()[:2] == ["ok", f"webhook:{HOOK}:"]
    post = hook.posts[-1]
    assert len(hook.posts) == posts_before + 1 and post.path == "/services/drift"
    text = post.json["text"]
    assert text.startswith("taxiflow: green 2021-01 DRIFT vs 2023-01: 3 of 4 columns (PULocationID, DOLocationID, prediction), nyc-taxi-duration v1")
    assert "drift share: 75% of 4 columns (alert at 75%)" in text and f"RMSE: {summary['rmse']:.4f} (validation 6.0345)" in text
    assert MlflowClient(tracking).get_run(summary["mlflow_run_id"]).data.tags["taxiflow.dataset_drift"] == "true"


def test_no_champion_or_an_unknown_version_is_a_clear_error_and_writes_nothing(taxiflow, tlc_dir, tracking, tmp_path):
    out = tmp_path / "out"
    none = score(taxiflow, tlc_dir, tracking, "--month", "2023-03", "--model-name", "never-trained", "--output", str(out))
    assert none.returncode == 1
    assert f"taxiflow: error: never-trained has no champion in {tracking}: train one first (`taxiflow train`) or pass --model-version" in none.stderr
    unknown = score(taxiflow, tlc_dir, tracking, "--month", "2023-03", "--model-version", "9", "--output", str(out))
    assert unknown.returncode == 2 and "taxiflow: error: nyc-taxi-duration has no version 9" in unknown.stderr
    assert not out.exists()


def test_a_failure_while_writing_leaves_no_file_the_previous_one_intact_and_notifies(taxiflow, tlc_dir, tracking, hook, tmp_path):
    final = tmp_path / "green" / "2023-03" / "predictions-v1.parquet"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"the previous run's file")
    posts_before = len(hook.posts)
    env = {"TAXIFLOW_FAILPOINTS": "write-predictions", "TAXIFLOW_NOTIFY_TARGETS": f"webhook:{HOOK}"}
    failed = score(taxiflow, tlc_dir, tracking, "--month", "2023-03", "--output", str(tmp_path), env=env)
    assert failed.returncode == 1 and "failpoint 'write-predictions'" in failed.stderr
    # The failed run tells the targets, as a failed training run does.
    assert len(hook.posts) == posts_before + 1
    text = hook.posts[-1].json["text"]
    assert text.startswith("taxiflow: green 2023-03 scoring FAILED:") and "failpoint 'write-predictions'" in text and "event: score failed" in text
    # The batch written before the failure went with its temporary file: nothing partial, nothing replaced.
    assert [p.name for p in final.parent.iterdir()] == [final.name] and final.read_bytes() == b"the previous run's file"
