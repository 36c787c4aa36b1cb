"""`taxiflow train` as a user runs it: real TLC files, a real Prefect server, real MLflow stores."""

from __future__ import annotations

import re

import httpx
import mlflow
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import registered_versions
from tests.support.course_pipeline import course_linear_regression
from tests.support.servers import copy_month, file_server, mlflow_server, stage_tlc_tree

COURSE_RMSE = {("2023-01", "2023-02"): 5.1916, ("2021-01", "2021-02"): 6.4798}


def _kept_trips(path):
    """Trips of 1..60 minutes and their durations, computed independently of taxiflow."""
    table = pq.read_table(path, columns=["lpep_pickup_datetime", "lpep_dropoff_datetime", "PULocationID", "DOLocationID", "trip_distance"])
    minutes = pc.divide(pc.cast(pc.subtract(table["lpep_dropoff_datetime"], table["lpep_pickup_datetime"]), "int64"), 60e6)
    keep = pc.and_(pc.greater_equal(minutes, 1), pc.less_equal(minutes, 60))
    return table.filter(keep), minutes.filter(keep).to_numpy()


def _validation_rmse_of_registered_model(tracking_uri: str, model_uri: str, val_file) -> float:
    """Score the validation month through the registered pyfunc, as a server would load it."""
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    table, minutes = _kept_trips(val_file)
    predictions = model.predict(table.select(["PULocationID", "DOLocationID", "trip_distance"]).to_pandas())
    return float(np.sqrt(np.mean((np.asarray(predictions) - minutes) ** 2)))


def test_main_job_without_a_prefect_server_matches_the_course(run_taxiflow, tlc_dir, state_dir):
    """The README's main command: no Prefect server (the local one starts), SQLite MLflow, local files."""
    result = run_taxiflow("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(tlc_dir), "--json", server=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    assert (summary["rows_train"], summary["rows_val"]) == (65_946, 62_574)
    assert summary["rmse"] == pytest.approx(COURSE_RMSE[("2023-01", "2023-02")], abs=0.02)
    # DictVectorizer's 5,702 columns, less those seen once: XGBoost can't split on them (min_child_weight 1.06).
    assert (summary["n_features"], summary["n_features_pruned"]) == (2913, 2789)
    assert summary["model_name"] == "nyc-taxi-duration" and summary["model_version"] == "1"
    assert registered_versions(state_dir) == ["1"]

    tracking_uri = f"sqlite:///{state_dir / 'mlflow.db'}"
    run = MlflowClient(tracking_uri).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train_month"] == "2023-01" and run.data.params["xgb_max_depth"] == "30"
    assert run.data.params["train_sha256"].startswith("9f0e03dd7f8f94ec")
    assert run.data.metrics["rows_val"] == 62_574
    # The registered model reproduces the reported RMSE from raw trip columns.
    served_rmse = _validation_rmse_of_registered_model(tracking_uri, summary["model_uri"], tlc_dir / "green_tripdata_2023-02.parquet")
    assert served_rmse == pytest.approx(summary["rmse"], abs=1e-4)


def test_2021_months_against_a_prefect_server_with_report(run_taxiflow, tlc_dir, prefect_api, state_dir):
    result = run_taxiflow("train", "--train-month", "2021-01", "--val-month", "2021-02", "--data-dir", str(tlc_dir), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    assert (summary["rows_train"], summary["rows_val"]) == (73_908, 61_921)
    assert summary["rmse"] == pytest.approx(COURSE_RMSE[("2021-01", "2021-02")], abs=0.02)

    # The flow run, its task graph and the report are on the server.
    run = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}").get_run(summary["run_id"])
    flow_run_id = run.data.tags["taxiflow.prefect_flow_run_id"]
    flow_run = httpx.get(f"{prefect_api}/flow_runs/{flow_run_id}").json()
    assert flow_run["state"]["type"] == "COMPLETED"
    assert flow_run["parameters"]["train_month"] == "2021-01"
    task_runs = httpx.post(f"{prefect_api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    names = [t["name"] for t in task_runs]
    for stage in (
        "check_tracking_store",
        "get-green-2021-01",
        "prepare-2021-02",
        "build-features",
        "fit_model",
        "evaluate_model",
        "log_model_run",
        "register_model_version",
        "evaluate_gate",
        "publish_evaluation_report",
        "publish_report",
        "commit_with_decision",
    ):
        assert any(n.startswith(stage) for n in names), (stage, names)
    artifacts = httpx.post(
        f"{prefect_api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["duration-model-report"]}}}
    ).json()
    assert len(artifacts) == 1 and artifacts[0]["type"] == "markdown"
    report = artifacts[0]["data"]
    assert "```" not in report, "the report renders as a document, not a code block"
    assert summary["run_id"] in report and f"{summary['rmse']:.4f}" in report and "73,908" in report


@pytest.mark.parametrize("collapse_flag", [[], ["--no-collapse-duplicates"]], ids=["default", "no-collapse"])
@pytest.mark.parametrize(
    "train_month, val_month, features",
    [("2021-01", "2021-02", "pu_do,distance"), ("2023-01", "2023-02", "pu_do,distance"), ("2023-01", "2023-02", "pu,do")],
)
def test_linear_model_equals_the_course_linear_regression(run_taxiflow, tlc_dir, train_month, val_month, features, collapse_flag):
    """Same RMSE and intercept as pandas + DictVectorizer + LinearRegression on the same files (issue 10)."""
    result = run_taxiflow(
        "train",
        "--model",
        "linear",
        "--features",
        features,
        "--train-month",
        train_month,
        "--val-month",
        val_month,
        "--data-dir",
        str(tlc_dir),
        *collapse_flag,
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    course = course_linear_regression(tlc_dir / f"green_tripdata_{train_month}.parquet", tlc_dir / f"green_tripdata_{val_month}.parquet", features.split(","))
    assert summary["n_features"] == course.n_features
    assert summary["rmse"] == pytest.approx(course.rmse, abs=1e-4)
    assert summary["intercept"] == pytest.approx(course.intercept, abs=1e-4)


def test_linear_model_and_homework_features_against_an_mlflow_server(run_taxiflow, tlc_dir, tmp_path):
    with mlflow_server(tmp_path / "mlflow") as tracking_uri:
        result = run_taxiflow(
            "train",
            "--model",
            "linear",
            "--features",
            "pu,do",
            "--train-month",
            "2023-01",
            "--val-month",
            "2023-02",
            "--data-dir",
            str(tlc_dir),
            "--tracking-uri",
            tracking_uri,
            "--experiment",
            "homework",
            "--json",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = result.json()
        assert isinstance(summary["intercept"], float)
        train = _kept_trips(tlc_dir / "green_tripdata_2023-01.parquet")[0]
        zones = len(pc.unique(train["PULocationID"])) + len(pc.unique(train["DOLocationID"]))
        assert summary["n_features"] == zones  # one column per pickup zone and per dropoff zone, no distance
        client = MlflowClient(tracking_uri)
        versions = client.search_model_versions("name='nyc-taxi-duration'")
        assert [v.version for v in versions] == [summary["model_version"]]
        run = client.get_run(summary["run_id"])
        assert run.data.params["features"] == "pu,do" and run.data.params["model"] == "linear"
        assert run.data.metrics["intercept"] == pytest.approx(summary["intercept"])
        assert "feature_vocabulary.json" in [a.path for a in client.list_artifacts(summary["run_id"])]
        served_rmse = _validation_rmse_of_registered_model(tracking_uri, summary["model_uri"], tlc_dir / "green_tripdata_2023-02.parquet")
        assert served_rmse == pytest.approx(summary["rmse"], abs=1e-4)


def test_months_missing_locally_are_downloaded(run_taxiflow, tlc_dir, tmp_path, state_dir):
    data_dir = tmp_path / "data"
    with file_server(stage_tlc_tree(tlc_dir, tmp_path / "site")) as base_url:
        result = run_taxiflow(
            "train",
            "--model",
            "linear",
            "--train-month",
            "2023-01",
            "--val-month",
            "2023-02",
            "--data-dir",
            str(data_dir),
            "--tlc-base-url",
            base_url,
            "--json",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.json()["rows_train"] == 65_946
    assert not data_dir.exists(), "downloads go to the cache, not the user's data directory"
    cached = sorted(p.name for p in (state_dir / "cache").rglob("*.parquet"))
    assert cached == ["green_tripdata_2023-01.parquet", "green_tripdata_2023-02.parquet"]


def test_xgboost_parameters_are_overridable(run_taxiflow, tlc_dir, state_dir):
    result = run_taxiflow(
        "train",
        "--train-month",
        "2023-01",
        "--val-month",
        "2023-02",
        "--data-dir",
        str(tlc_dir),
        "--max-depth",
        "6",
        "--num-boost-round",
        "15",
        "--learning-rate",
        "0.3",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    params = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}").get_run(summary["run_id"]).data.params
    assert (params["xgb_max_depth"], params["xgb_num_boost_round"], params["xgb_learning_rate"]) == ("6", "15", "0.3")
    assert summary["best_iteration"] <= 14


# --- bad input: a clear message, a non-zero exit, no registered model version -------------------------


def _bad_parquet(tlc_dir, data_dir, month, transform):
    data_dir.mkdir(parents=True, exist_ok=True)
    table = transform(pq.read_table(tlc_dir / "green_tripdata_2023-02.parquet"))
    pq.write_table(table, data_dir / f"green_tripdata_{month}.parquet")


@pytest.mark.parametrize(
    "case, args, message, exit_code",
    [
        ("wrong order", ["--train-month", "2023-02", "--val-month", "2023-01"], r"--val-month \(2023-01\) must be after --train-month \(2023-02\)", 2),
        (
            "wrong format",
            ["--train-month", "2023-1", "--val-month", "2023-02"],
            r"--train-month: expected a month as YYYY-MM \(e\.g\. 2023-01\), got '2023-1'",
            2,
        ),
        (
            "unknown feature",
            ["--train-month", "2023-01", "--val-month", "2023-02", "--features", "pu_do,zone"],
            r"--features: expected one of pu_do, pu, do or distance, got 'zone'",
            2,
        ),
        (
            "bad parameter",
            ["--train-month", "2023-01", "--val-month", "2023-02", "--max-depth", "0"],
            r"--max-depth: expected an integer in 1\.\.100, got '0'",
            2,
        ),
        # The flow's bound (it caps max_depth at 100, the top of the course's search space): the same limit, refused before Prefect starts.
        (
            "beyond the flow's bound",
            ["--train-month", "2023-01", "--val-month", "2023-02", "--max-depth", "101"],
            r"--max-depth: expected an integer in 1\.\.100, got '101'",
            2,
        ),
        (
            "not a number",
            ["--train-month", "2023-01", "--val-month", "2023-02", "--learning-rate", "fast"],
            r"--learning-rate: expected a number > 0 and <= 1, got 'fast'",
            2,
        ),
    ],
)
def test_bad_arguments_fail_before_any_work(run_taxiflow, state_dir, case, args, message, exit_code):
    result = run_taxiflow("train", *args)
    assert result.returncode == exit_code
    assert re.fullmatch("taxiflow: error: " + message + r".*\n", result.stderr), "one line naming the option: " + result.stderr[-2000:]
    assert not state_dir.exists(), "refused before touching any state: no tracking store, no cache"


def test_unpublished_month(run_taxiflow, tlc_dir, tmp_path, state_dir):
    data_dir = tmp_path / "data"
    copy_month(tlc_dir, "green_tripdata_2023-01.parquet", data_dir)
    with file_server(stage_tlc_tree(tlc_dir, tmp_path / "site")) as base_url:
        result = run_taxiflow("train", "--train-month", "2023-01", "--val-month", "2031-07", "--data-dir", str(data_dir), "--tlc-base-url", base_url)
    assert result.returncode == 1
    assert "taxiflow: error: green 2031-07 is not published" in result.stderr
    assert registered_versions(state_dir) == []
    assert not (data_dir / "green_tripdata_2031-07.parquet").exists()


@pytest.mark.parametrize(
    "case, make_file, message",
    [
        (
            "not parquet",
            lambda d, t: (d / "green_tripdata_2023-02.parquet").write_text("<html>404 Not Found</html>"),
            r"green_tripdata_2023-02\.parquet: not a readable parquet file",
        ),
        (
            "missing column",
            lambda d, t: _bad_parquet(t, d, "2023-02", lambda tb: tb.drop_columns(["lpep_dropoff_datetime"])),
            r"green_tripdata_2023-02\.parquet: missing column\(s\) lpep_dropoff_datetime",
        ),
        (
            "no rows left",
            lambda d, t: _bad_parquet(
                t,
                d,
                "2023-02",
                lambda tb: tb.set_column(tb.schema.get_field_index("lpep_dropoff_datetime"), "lpep_dropoff_datetime", tb["lpep_pickup_datetime"]),
            ),
            r"green_tripdata_2023-02\.parquet: no usable trips: all 64,809 rows failed checks: duration_out_of_range 64,809",
        ),
        (
            "zone IDs as text",
            lambda d, t: _bad_parquet(
                t, d, "2023-02", lambda tb: tb.set_column(tb.schema.get_field_index("PULocationID"), "PULocationID", pc.cast(tb["PULocationID"], "string"))
            ),
            r"green_tripdata_2023-02\.parquet: column 'pickup_zone' holds String, expected integer zone IDs",
        ),
    ],
)
def test_bad_files(run_taxiflow, tlc_dir, tmp_path, state_dir, case, make_file, message):
    data_dir = tmp_path / "data"
    copy_month(tlc_dir, "green_tripdata_2023-01.parquet", data_dir)
    make_file(data_dir, tlc_dir)
    result = run_taxiflow("train", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(data_dir), "--tlc-base-url", "")
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search("taxiflow: error: .*" + message, result.stderr), result.stderr[-2000:]
    assert registered_versions(state_dir) == []


def test_feature_a_trip_type_lacks(run_taxiflow, tlc_dir, tmp_path, state_dir):
    data_dir = tmp_path / "data"
    for month in ("2023-01", "2023-02"):
        copy_month(tlc_dir, f"green_tripdata_{month}.parquet", data_dir).rename(data_dir / f"fhv_tripdata_{month}.parquet")
    result = run_taxiflow("train", "--taxi", "fhv", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(data_dir))
    assert result.returncode == 2, "refused up front, before any data is read"
    assert "taxiflow: error: --features: fhv trips have no distance column" in result.stderr
    assert not state_dir.exists(), "refused before touching any state: no tracking store, no cache"
