import math
import tomllib

import pytest

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.request import TrainRequest, TuneRequest, validated_request
from taxiflow.core.tuning import COURSE_SPACE, TrialOutcome, params_document, parse_params_document, parse_search_space, study_name, top_trials


def test_the_default_space_is_the_courses():
    space = {r.name: r for r in COURSE_SPACE}
    assert (space["max_depth"].low, space["max_depth"].high, space["max_depth"].log, space["max_depth"].integer) == (4, 100, False, True)
    assert space["learning_rate"].log and math.isclose(space["learning_rate"].low, math.exp(-3)) and space["learning_rate"].high == 1.0
    assert math.isclose(space["reg_alpha"].low, math.exp(-5)) and math.isclose(space["reg_alpha"].high, math.exp(-1))
    assert math.isclose(space["reg_lambda"].low, math.exp(-6)) and math.isclose(space["reg_lambda"].high, math.exp(-1))
    assert math.isclose(space["min_child_weight"].low, math.exp(-1)) and math.isclose(space["min_child_weight"].high, math.exp(3))
    assert all(r.log for r in COURSE_SPACE if r.name != "max_depth")


def test_a_space_file_replaces_only_the_ranges_it_gives():
    document = tomllib.loads("[space.max_depth]\nhigh = 30\n[space.learning_rate]\nlow = 0.05\nhigh = 0.5\nlog = false\n")
    space = {r.name: r for r in parse_search_space(document, source="space.toml")}
    assert (space["max_depth"].low, space["max_depth"].high) == (4, 30)
    assert (space["learning_rate"].low, space["learning_rate"].high, space["learning_rate"].log) == (0.05, 0.5, False)
    assert space["reg_alpha"] == next(r for r in COURSE_SPACE if r.name == "reg_alpha")
    assert parse_search_space({}, source="empty.toml") == COURSE_SPACE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[space.gamma]\nhigh = 1\n", "space.toml: cannot search gamma"),
        ("[space.max_depth]\nlow = 10\nhigh = 5\n", "space.toml: [space.max_depth]: low (10) must be below high (5)"),
        ("[space.max_depth]\nhigh = 7.5\n", "space.toml: [space.max_depth]: max_depth takes whole numbers"),
        ("[space.reg_alpha]\nlow = 0\n", "space.toml: [space.reg_alpha]: low must be > 0 on a log scale"),
        ("[space.learning_rate]\nhigh = 2\n", "learning_rate must stay <= 1"),
        ("[space.max_depth]\nhigh = 'deep'\n", "space.toml: [space.max_depth]: high must be a finite number, got 'deep'"),
        ("[space.max_depth]\nstep = 2\n", "unknown key(s) step"),
        ("[other]\nx = 1\n", "space.toml: unknown table(s) other"),
    ],
)
def test_a_bad_space_file_is_refused_naming_the_file_and_the_key(text, message):
    with pytest.raises(InvalidArgumentError) as error:
        parse_search_space(tomllib.loads(text), source="space.toml")
    assert message in str(error.value)


def test_a_params_file_round_trips_and_is_checked():
    params = {"max_depth": 12, "learning_rate": 0.123456789012345, "reg_alpha": 0.01, "reg_lambda": 0.02, "min_child_weight": 1.5}
    text = params_document(params, provenance={"study": 'tune-"green"', "trial": 7, "rmse": 5.1})
    document = tomllib.loads(text)
    assert parse_params_document(document, source="best.toml") == params
    assert document["source"] == {"study": 'tune-"green"', "trial": 7, "rmse": 5.1}
    for bad, message in (
        ({}, "best.toml: no [xgboost] table"),
        ({"xgboost": {"gamma": 1}}, "best.toml: [xgboost] has gamma"),
        ({"xgboost": {"max_depth": 2.5}}, "best.toml: [xgboost] max_depth must be a whole number"),
        ({"xgboost": {"learning_rate": "fast"}}, "best.toml: [xgboost] learning_rate must be a number"),
    ):
        with pytest.raises(InvalidArgumentError) as error:
            parse_params_document(bad, source="best.toml")
        assert message in str(error.value)


def test_train_options_win_over_a_params_file_and_its_values_stay_in_bounds():
    request = validated_request(TrainRequest, {"params": "best", "max_depth": 8})
    merged = request.with_params({"max_depth": 40, "learning_rate": 0.3})
    assert (merged.max_depth, merged.learning_rate, merged.params) == (8, 0.3, "best")
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        request.with_params({"learning_rate": 3.0})
    # As a flow receives it: every parameter passed, the unset ones as None. The file still fills them.
    from_flow = validated_request(TrainRequest, {name: None for name in ("max_depth", "learning_rate", "seed")} | {"params": "best"})
    assert from_flow.with_params({"max_depth": 40}).max_depth == 40


def test_a_study_is_named_by_everything_that_gives_a_trial_its_score():
    base = {"taxi": "green", "train_month": "2023-01", "val_month": "2023-02", "data": ("a", "b"), "setup": {"rounds": 100}, "space": COURSE_SPACE}
    name = study_name(**base)
    assert name.startswith("tune-green-2023-01-2023-02-") and study_name(**base) == name
    narrower = parse_search_space({"space": {"max_depth": {"high": 30}}}, source="s")
    for changed in ({"data": ("a", "c")}, {"setup": {"rounds": 10}}, {"space": narrower}):
        assert study_name(**(base | changed)) != name


def test_top_trials_are_the_best_complete_ones():
    def outcome(number, state, rmse):
        return TrialOutcome(number, state, {}, rmse, None, 10, 1.0, None)

    outcomes = [outcome(0, "complete", 5.3), outcome(1, "pruned", None), outcome(2, "complete", 5.1), outcome(3, "failed", None), outcome(4, "complete", 5.1)]
    assert [o.number for o in top_trials(outcomes)] == [2, 4, 0]
    assert [o.number for o in top_trials(outcomes, 1)] == [2]


def test_a_tune_request_shares_the_training_options_and_refuses_forcing():
    request = validated_request(TuneRequest, {"train_month": "2023-01", "val_month": "2023-02", "trials": 5, "num_boost_round": 7, "features": ["pu_do"]})
    trial = request.trial_request(COURSE_SPACE)
    # Every trial's vocabulary keeps the categories the smallest min_child_weight of the space can split.
    assert trial.min_child_weight == pytest.approx(math.exp(-1)) and trial.num_boost_round == 7 and trial.features == ["pu_do"]
    best = request.best_train_request("/p/best.toml")
    assert best.params == "/p/best.toml" and best.min_child_weight is None and best.num_boost_round == 7
    with pytest.raises(InvalidArgumentError, match="promote force"):
        validated_request(TuneRequest, {"train_month": "2023-01", "val_month": "2023-02", "promote": "force"})
    with pytest.raises(InvalidArgumentError, match="val_month"):
        validated_request(TuneRequest, {"train_month": "2023-02", "val_month": "2023-01"})
