"""`taxiflow backfill` and identity caching through the real command, against the session's Prefect server.

Four months: green 2023-01..03 as published, and a 2023-04 made of 2023-03's real rows one month
later (no real April is stored here). The MLflow store is the default local SQLite one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import registered_versions

RANGE = ("--from", "2023-01", "--to", "2023-04", "--model", "linear")


@pytest.fixture
def months(tmp_path, tlc_dir) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("green_tripdata_2023-01.parquet", "green_tripdata_2023-02.parquet", "green_tripdata_2023-03.parquet", "taxi_zone_lookup.csv"):
        (data / name).symlink_to(tlc_dir / name)
    march = pq.read_table(tlc_dir / "green_tripdata_2023-03.parquet")
    for column in ("lpep_pickup_datetime", "lpep_dropoff_datetime"):
        march = march.set_column(march.schema.get_field_index(column), column, pc.add(march[column], dt.timedelta(days=31)))
    pq.write_table(march, data / "green_tripdata_2023-04.parquet")
    return data


def _pairs(result) -> dict[str, dict]:
    return {row["pair"]: row for row in result.json()["pairs"]}


def _flow_runs_tagged(prefect_api: str, tag: str) -> list[dict]:
    response = httpx.post(f"{prefect_api}/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}}, "sort": "EXPECTED_START_TIME_ASC"}, timeout=30)
    response.raise_for_status()
    return response.json()


def test_a_backfill_fails_only_the_broken_months_pairs_then_mode_failed_completes_it(run_taxiflow, months, state_dir, prefect_api, tlc_dir):
    march = months / "green_tripdata_2023-03.parquet"
    march.unlink()
    march.write_bytes((tlc_dir / "green_tripdata_2023-03.parquet").read_bytes()[:200_000])  # cut short: no footer

    first = run_taxiflow("backfill", *RANGE, "--data-dir", str(months), "--json")
    assert first.returncode == 1, first.stderr[-3000:]
    pairs = _pairs(first)
    assert pairs["2023-01->2023-02"]["status"] == "trained" and pairs["2023-01->2023-02"]["promoted"]
    for broken in ("2023-02->2023-03", "2023-03->2023-04"):
        assert pairs[broken]["status"] == "failed" and "green_tripdata_2023-03.parquet: not a readable parquet file" in pairs[broken]["detail"]
    assert "error: 2 of 3 pair(s) failed: 2023-02->2023-03: " in first.stderr
    assert registered_versions(state_dir) == ["1"]

    march.unlink()
    march.symlink_to(tlc_dir / "green_tripdata_2023-03.parquet")
    plan = run_taxiflow("backfill", *RANGE, "--data-dir", str(months), "--mode", "failed", "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "skip  2023-01->2023-02  mode failed: its last run completed" in plan.stdout
    assert "run   2023-02->2023-03  its last run failed" in plan.stdout and "run   2023-03->2023-04  its last run failed" in plan.stdout
    assert registered_versions(state_dir) == ["1"]  # a dry run changes nothing

    second = run_taxiflow("backfill", *RANGE, "--data-dir", str(months), "--mode", "failed", "--max-concurrency", "2", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    pairs = _pairs(second)
    assert [p["status"] for p in pairs.values()] == ["skipped", "trained", "trained"]
    # Gates ran in month order: each pair met the champion the pair before it left.
    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    feb, mar = pairs["2023-02->2023-03"], pairs["2023-03->2023-04"]
    before = {p["version"]: client.get_model_version("nyc-taxi-duration", p["version"]).tags["taxiflow.champion_version_before"] for p in (feb, mar)}
    assert before[feb["version"]] == "1"
    assert before[mar["version"]] == (feb["version"] if feb["promoted"] else "1")
    assert second.json()["champion_version"] == str(client.get_registered_model("nyc-taxi-duration").aliases["champion"])
    # Each pair's runs are child flow runs of a backfill: the failed one, then the one that completed.
    runs = _flow_runs_tagged(prefect_api, "taxiflow-pair:green:2023-02:2023-03")
    runs = [r for r in runs if r["parent_task_run_id"]]
    assert [r["state_type"] for r in runs][-2:] == ["FAILED", "COMPLETED"]

    # Nothing changed: every pair is up to date, nothing is trained or registered.
    third = run_taxiflow("backfill", *RANGE, "--data-dir", str(months), "--json")
    assert third.returncode == 0, third.stderr[-3000:]
    assert [p["status"] for p in third.json()["pairs"]] == ["up to date"] * 3
    assert sorted(registered_versions(state_dir)) == ["1", "2", "3"]

    # `train` on a pair trained before returns that run (cached) unless told to retrain, which reuses the prepared months.
    train = ("train", "--train-month", "2023-02", "--val-month", "2023-03", "--data-dir", str(months), "--model", "linear", "--json")
    cached = run_taxiflow(*train)
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert (
        cached.json()["cached"] is True and cached.json()["model_version"] == feb["version"] and cached.json()["rmse"] == pytest.approx(feb["rmse"], abs=1e-4)
    )
    retrained = run_taxiflow(*train, "--retrain")
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    summary = retrained.json()
    assert summary["cached"] is False and summary["model_version"] == "4" and summary["prepared_from_cache"] == {"2023-02": True, "2023-03": True}
    assert summary["rmse"] == pytest.approx(cached.json()["rmse"], abs=1e-9)
    assert "prepared trips from the cache" in retrained.stderr
