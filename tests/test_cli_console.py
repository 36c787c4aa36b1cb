"""What the terminal shows (issue 12): one clear message for an expected error, no library noise on success.

The full story stays where it belongs: the failing run's traceback is in Prefect's logs (API/UI)
and on the console with -v.
"""

from __future__ import annotations

import shutil

import httpx

from tests.conftest import REPO
from tests.support.servers import copy_month

NOISE = (
    "Traceback",
    "UserWarning",
    "type hints to the `predict` method",
    "Failed to resolve installed pip version",
    "Detected uv project",
    "Copied uv.lock",
    "Successfully registered model",
    "View run",
    "Creating initial MLflow database tables",
)


def _bad_month_dir(tlc_dir, tmp_path):
    data_dir = tmp_path / "data"
    copy_month(tlc_dir, "green_tripdata_2023-01.parquet", data_dir)
    (data_dir / "green_tripdata_2023-02.parquet").write_text("<html>404 Not Found</html>")
    return data_dir


def test_an_expected_failure_shows_one_message_and_prefect_keeps_the_traceback(run_taxiflow, tlc_dir, tmp_path, prefect_api):
    args = (
        "train",
        "--model",
        "linear",
        "--train-month",
        "2023-01",
        "--val-month",
        "2023-02",
        "--data-dir",
        str(_bad_month_dir(tlc_dir, tmp_path)),
        "--tlc-base-url",
        "",
    )
    result = run_taxiflow(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("taxiflow: error: ") and "green_tripdata_2023-02.parquet: not a readable parquet file" in lines[-1]
    assert lines[-2] == "taxiflow: the run failed; its full log, traceback included, is in the Prefect UI (or rerun with -v)"
    for noise in NOISE:
        assert noise not in result.stderr, noise
    assert sum("DataFileError" in line for line in lines) <= 1  # Prefect's final state line, at most

    # The traceback was not lost: it is in the run's logs on the server.
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()
    logs = httpx.post(f"{prefect_api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200}).json()
    assert any("Traceback" in log["message"] and "DataFileError" in log["message"] for log in logs)

    verbose = run_taxiflow("-v", *args)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and verbose.stderr.strip().splitlines()[-1] == lines[-1]


def test_a_successful_run_prints_no_library_noise(run_taxiflow, tlc_dir, tmp_path):
    # Run from a uv project, as from a checkout (MLflow then copies its lock file into the model, and says so).
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    result = run_taxiflow("train", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02", "--data-dir", str(tlc_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in NOISE:
        assert noise not in result.stderr + result.stdout, noise
    assert result.stdout.splitlines()[0].startswith("Trained linear on green 2023-01 (65,946 of 68,211 rows)")
