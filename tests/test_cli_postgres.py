"""Trips from PostgreSQL through the real commands: `data load-sql`, then `train --source postgres`.

A real PostgreSQL (password authentication) on 127.0.0.1, the session's Prefect server, the real
green months. The connection string reaches the commands only through the environment.
"""

from __future__ import annotations

import pytest

from tests.conftest import registered_versions
from tests.support.postgres import trips_postgres

PAIR = ("--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "10", "--json")


@pytest.fixture(scope="module")
def trips_db():
    with trips_postgres() as server:
        yield server


def test_months_loaded_into_postgres_train_to_the_same_rmse_as_their_files(run_taxiflow, tlc_dir, trips_db, state_dir):
    env = {"TAXIFLOW_POSTGRES_URL": trips_db.url()}
    loaded = run_taxiflow("data", "load-sql", "--taxi", "green", "--months", "2023-01..2023-02", "--data-dir", str(tlc_dir), env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "ok      green 2023-01: 68,211 rows into taxiflow_green_trips" in loaded.stdout
    assert "ok      green 2023-02: 64,809 rows into taxiflow_green_trips" in loaded.stdout

    from_files = run_taxiflow("train", *PAIR, "--data-dir", str(tlc_dir))
    from_sql = run_taxiflow("train", *PAIR, "--source", "postgres", env=env)
    assert from_files.returncode == 0, from_files.stderr[-3000:]
    assert from_sql.returncode == 0, from_sql.stderr[-3000:]
    files, sql = from_files.json(), from_sql.json()
    # Another identity (a load, not a file digest): trained, not returned from the file run.
    assert sql["cached"] is False and sql["model_version"] == "2"
    assert (sql["rows_train_read"], sql["rows_train"], sql["rows_val"]) == (files["rows_train_read"], files["rows_train"], files["rows_val"])
    assert sql["rmse"] == files["rmse"]
    assert "taxiflow_green_trips at PostgreSQL 127.0.0.1" in from_sql.stderr
    for output in (loaded.stdout, loaded.stderr, from_sql.stdout, from_sql.stderr):
        assert trips_db.password not in output

    # The same loads are the same inputs: a backfill's plan finds the version just trained.
    plan = run_taxiflow("backfill", "--from", "2023-01", "--to", "2023-02", "--num-boost-round", "10", "--source", "postgres", "--dry-run", env=env)
    assert "skip  2023-01->2023-02  up to date: v2 was trained on identical inputs" in plan.stdout, plan.stdout + plan.stderr[-2000:]


def test_postgres_errors_are_one_clear_line_and_register_nothing(run_taxiflow, tlc_dir, trips_db, state_dir):
    good = {"TAXIFLOW_POSTGRES_URL": trips_db.url()}
    assert run_taxiflow("data", "load-sql", "--months", "2023-01", "--data-dir", str(tlc_dir), env=good).returncode == 0
    cases = [
        ({"TAXIFLOW_POSTGRES_URL": trips_db.url(password="not-the-password")}, "2023-02", "refused user taxiflow: password authentication failed"),
        (good, "2023-03", "green 2023-03 is not loaded in taxiflow_green_trips"),  # never loaded
        ({"TAXIFLOW_POSTGRES_URL": ""}, "2023-02", "no PostgreSQL URL: TAXIFLOW_POSTGRES_URL is unset and there is no Secret block 'taxi-postgres'"),
    ]
    for env, val_month, expected in cases:
        result = run_taxiflow("train", "--train-month", "2023-01", "--val-month", val_month, "--model", "linear", "--source", "postgres", env=env)
        assert result.returncode == 1, result.stderr[-3000:]
        assert expected in result.stderr, result.stderr[-3000:]
        assert trips_db.password not in result.stderr + result.stdout
    assert registered_versions(state_dir) == []
