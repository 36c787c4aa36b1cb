"""The Optuna study behind `taxiflow tune`, on a real SQLite storage: resumable, one tune at a time, pruning an XGBoost fit."""

import numpy as np
import pytest

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.tuning import COURSE_SPACE, TrialOutcome
from taxiflow.io.tuning import Study, TuningBusyError, load_params_file, pruning_callback, storage_url, study_lock, write_params_file
from taxiflow.settings import TaxiflowSettings


@pytest.fixture
def settings(tmp_path):
    return TaxiflowSettings(state_dir=tmp_path / "state")


def _complete(number: int, rmse: float) -> TrialOutcome:
    return TrialOutcome(number, "complete", {}, rmse, None, 10, 1.0, None)


def test_asked_parameters_stay_in_the_space_and_a_reopened_study_keeps_its_trials(settings):
    study = Study(storage_url(settings), "s1", sampler_seed=1, pruning=True)
    ranges = {r.name: r for r in COURSE_SPACE}
    for number in range(3):
        trial, params = study.ask(COURSE_SPACE)
        assert trial.number == number and set(params) == set(ranges)
        assert all(ranges[k].low <= v <= ranges[k].high for k, v in params.items())
        assert isinstance(params["max_depth"], int)
        study.tell(trial, _complete(number, 5.0 + number))
    again = Study(storage_url(settings), "s1", sampler_seed=1, pruning=True)
    assert again.finished() == 3 and [o.rmse for o in again.outcomes()] == [5.0, 6.0, 7.0]


def test_trials_a_dead_tune_left_running_fail_and_run_again_with_their_parameters(settings):
    study = Study(storage_url(settings), "s2", sampler_seed=1, pruning=True)
    done, params_done = study.ask(COURSE_SPACE)
    study.tell(done, _complete(0, 5.0))
    left_running, params_left = study.ask(COURSE_SPACE)  # the process dies here: never told
    study.set_attr(left_running, "mlflow_run_id", "run-of-trial-1")

    resumed = Study(storage_url(settings), "s2", sampler_seed=1, pruning=True)
    (stale,) = resumed.recover_interrupted(COURSE_SPACE)
    assert stale.number == left_running.number and stale.user_attrs["mlflow_run_id"] == "run-of-trial-1"
    assert [o.state for o in resumed.outcomes()] == ["complete", "failed"]
    retry, params = resumed.ask(COURSE_SPACE)
    assert params == params_left and retry.number == 2  # the interrupted parameters first, then new ones
    assert resumed.finished() == 1


def test_a_trial_killed_while_being_asked_is_failed_and_not_run_again(settings):
    study = Study(storage_url(settings), "s4", sampler_seed=1, pruning=True)
    partial = study._study.ask()  # the process dies between choosing one parameter and the next
    partial.suggest_int("max_depth", 4, 100)
    resumed = Study(storage_url(settings), "s4", sampler_seed=1, pruning=True)
    assert [t.number for t in resumed.recover_interrupted(COURSE_SPACE)] == [0]
    retry, params = resumed.ask(COURSE_SPACE)
    assert retry.number == 1 and "retry_of" not in retry.user_attrs and set(params) == {r.name for r in COURSE_SPACE}


def test_one_tune_per_study_at_a_time(settings):
    with study_lock(settings, "s3"):
        with pytest.raises(TuningBusyError, match="another `taxiflow tune` is working on study s3"):
            with study_lock(settings, "s3"):
                pass
    with study_lock(settings, "s3"):  # released: free again
        pass


def test_the_pruning_callback_stops_a_fit_when_the_study_says_so():
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(500, 3)), rng.normal(size=500)
    seen: list[tuple[int, float]] = []

    def report(step: int, value: float) -> bool:
        seen.append((step, value))
        return step == 4  # prune at round 5

    pruned: list[bool] = []
    booster = xgb.train(
        {"objective": "reg:squarederror", "nthread": 1},
        xgb.DMatrix(X, label=y),
        num_boost_round=50,
        evals=[(xgb.DMatrix(X, label=y), "validation")],
        verbose_eval=False,
        callbacks=[pruning_callback(report, pruned)],
    )
    assert pruned == [True] and booster.num_boosted_rounds() == 5
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4] and all(v > 0 for _, v in seen)


def test_params_files_best_and_named(settings, tmp_path):
    with pytest.raises(InvalidArgumentError, match="--params best: no tuned parameters for green yet"):
        load_params_file("best", "green", settings)
    with pytest.raises(InvalidArgumentError, match=f"params file {tmp_path / 'nope.toml'} does not exist"):
        load_params_file(str(tmp_path / "nope.toml"), "green", settings)
    written = write_params_file(settings.params_dir() / "green-best.toml", {"max_depth": 9, "learning_rate": 0.2}, {"trial": 3})
    assert load_params_file("best", "green", settings) == (written, {"max_depth": 9, "learning_rate": 0.2})
    assert not list(written.parent.glob(".*.tmp"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[xgboost\nmax_depth = 3")
    with pytest.raises(InvalidArgumentError, match="is not valid TOML"):
        load_params_file(str(broken), "green", settings)
