"""`taxiflow tune` through the command: a real search (a few trials, few rounds) with nested runs in a real
MLflow tracking server, killed mid-search and resumed, its best parameters trained through the gate and
picked up by `taxiflow train --params best`."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import registered_versions
from tests.support.servers import VENV_BIN, base_env, mlflow_server, wait_for

TUNE = ("tune", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "8", "--max-concurrency", "2")


def _study(state_dir):
    import optuna

    storage = f"sqlite:///{state_dir / 'tuning.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def _complete_and_one_midway(state_dir) -> bool:
    """A trial has completed and another is midway through its fit (rounds reported, several to go): the moment to kill."""
    if not (state_dir / "tuning.db").is_file():
        return False
    # Optuna's storage creates its tables when they are missing: opened while the tune creates them,
    # both would, and one fails ("table studies already exists"). Opened only once a study exists.
    with contextlib.closing(sqlite3.connect(state_dir / "tuning.db")) as db:
        try:
            if not db.execute("SELECT count(*) FROM studies").fetchone()[0]:
                return False
        except sqlite3.OperationalError:  # no tables yet
            return False
    try:
        trials = _study(state_dir).get_trials(deepcopy=False)
    except ValueError:  # the study is not created yet
        return False
    midway = any(t.state.name == "RUNNING" and 1 <= len(t.intermediate_values) <= 6 for t in trials)
    return midway and any(t.state.name == "COMPLETE" for t in trials)


@pytest.fixture
def tracking(tmp_path):
    with mlflow_server(tmp_path / "mlflow") as url:
        yield url


def test_a_killed_tune_resumes_and_its_best_parameters_are_trained_gated_and_picked_up(tmp_path, tlc_dir, prefect_api, state_dir, run_taxiflow, tracking):
    env = {"TAXIFLOW_DATA_DIR": str(tlc_dir), "MLFLOW_TRACKING_URI": tracking}
    # A tune killed (SIGKILL: no clean-up at all) while a trial runs, once another has completed.
    killed = subprocess.Popen(
        [str(VENV_BIN / "taxiflow"), *TUNE, "--trials", "4"],
        cwd=tmp_path,
        env=base_env(TAXIFLOW_STATE_DIR=str(state_dir), PREFECT_API_URL=prefect_api, **env),  # its own process, no warm runner
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _complete_and_one_midway(state_dir), timeout_s=300, what="a complete trial and one midway", interval_s=0.02)
    finally:
        killed.kill()
        killed.wait()
    before = _study(state_dir).get_trials()
    complete_before = [t for t in before if t.state.name == "COMPLETE"]
    running_before = [t for t in before if t.state.name == "RUNNING"]
    assert complete_before and running_before, [t.state.name for t in before]

    resumed = run_taxiflow(*TUNE, "--trials", "4", "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = resumed.json()
    trials = _study(state_dir).get_trials()
    # The same study, continued: what completed stays, what was running failed and ran again with its parameters.
    assert summary["study"] == _study(state_dir).study_name
    assert summary["trials"] == {"complete": 4, "pruned": 0, "failed": len(running_before)}
    assert summary["trials_run_now"] == 4 - len(complete_before)
    for old in complete_before:
        assert trials[old.number].state.name == "COMPLETE" and trials[old.number].params == old.params
    assert any(len(old.params) == 5 for old in running_before)  # one was fitting (midway)
    for old in running_before:
        assert trials[old.number].state.name == "FAIL"
        if len(old.params) == 5:  # it was fitting: the same parameters ran again (one killed while being asked has nothing to redo)
            assert any(t.params == old.params and t.user_attrs.get("retry_of") == old.number and t.state.name == "COMPLETE" for t in trials)

    # Nested runs in the tracking server: a parent per tune, a child per trial, none left running.
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("nyc-taxi-experiment").experiment_id], f"tags.`taxiflow.tune.study` = '{summary['study']}'")
    parents = [r for r in runs if "taxiflow.tune.trial" not in r.data.tags]
    children = [r for r in runs if "taxiflow.tune.trial" in r.data.tags]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED", "KILLED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {r.info.run_id for r in parents}
    by_trial = {int(r.data.tags["taxiflow.tune.trial"]): r for r in children}
    for t in trials:
        if t.state.name != "COMPLETE":  # killed before or after its run was created
            assert t.number not in by_trial or by_trial[t.number].info.status == "KILLED", (t.number, by_trial[t.number].info.status)
            continue
        run = by_trial[t.number]
        assert run.info.status == "FINISHED", (t.number, run.info.status)
        assert float(run.data.metrics["rmse"]) == pytest.approx(t.value) and int(run.data.params["xgb_max_depth"]) == t.params["max_depth"]
        assert len(client.get_metric_history(run.info.run_id, "validation_rmse_per_round")) == 8
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"])}
    assert {"optimization_history.png", "param_importances.png", "trials.json", "green-best.toml"} <= artifacts

    # The best parameters: written for `train`, and trained through the gate (the first model: champion).
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (t.value, t.number))
    assert summary["top"][0]["number"] == best.number and summary["top"][0]["rmse"] == pytest.approx(best.value)
    best_file = state_dir / "params" / "green-best.toml"
    assert summary["best_params_file"] == str(best_file.resolve())
    trained = summary["trained"]
    assert trained["model_version"] == "1" and trained["promoted"] is True and trained["gate"] == "promoted"
    assert int(client.get_run(trained["run_id"]).data.params["xgb_max_depth"]) == best.params["max_depth"]

    # `train --params best` picks them up; an option given on the command line wins over the file.
    again = run_taxiflow("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--num-boost-round", "8",
                         "--params", "best", "--learning-rate", "0.3", "--retrain", "--json", env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    params = client.get_run(again.json()["run_id"]).data.params
    assert int(params["xgb_max_depth"]) == best.params["max_depth"] and float(params["xgb_reg_alpha"]) == pytest.approx(best.params["reg_alpha"])
    assert float(params["xgb_learning_rate"]) == 0.3


def test_bad_search_inputs_fail_before_anything_runs(tmp_path, tlc_dir, state_dir, run_taxiflow):
    env = {"TAXIFLOW_DATA_DIR": str(tlc_dir)}
    space = tmp_path / "space.toml"
    space.write_text("[space.gamma]\nlow = 0\nhigh = 1\n")
    bad_space = run_taxiflow(*TUNE, "--space", str(space), env=env)
    assert bad_space.returncode == 2 and f"{space}: cannot search gamma" in bad_space.stderr, bad_space.stderr
    no_best = run_taxiflow("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--params", "best", env=env)
    assert no_best.returncode == 2 and "--params best: no tuned parameters for green yet" in no_best.stderr, no_best.stderr
    params = tmp_path / "params.toml"
    params.write_text('[xgboost]\nmax_depth = "deep"\n')
    bad_params = run_taxiflow("train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02", "--params", str(params), env=env)
    assert bad_params.returncode == 2 and f"{params}: [xgboost] max_depth must be a number" in bad_params.stderr, bad_params.stderr
    # Nothing was created: no study, no tracking store, no run.
    assert not (state_dir / "tuning.db").exists() and not (state_dir / "mlflow.db").exists()


def test_a_search_whose_trials_all_fail_fails_and_leaves_no_parameters_or_model(tlc_dir, state_dir, run_taxiflow):
    # Every fit fails (a failpoint inside the trial): each trial is recorded failed, the search goes on, then fails as a whole.
    result = run_taxiflow(*TUNE, "--trials", "2", env={"TAXIFLOW_DATA_DIR": str(tlc_dir), "TAXIFLOW_FAILPOINTS": "tune-trial"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no trial completed; trials failed with: failpoint 'tune-trial'" in result.stderr, result.stderr[-2000:]
    assert [t.state.name for t in _study(state_dir).get_trials()] == ["FAIL", "FAIL"]
    assert not (state_dir / "params").exists()
    assert registered_versions(state_dir) == []
