"""One definition of a training request: the CLI's options and the flow's run form come from it."""

import pytest
from prefect.utilities.callables import parameter_schema

from taxiflow.cli import TRAIN_OPTION_NAMES, _build_parser
from taxiflow.cli_requests import option_names, request_values
from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.request import TrainRequest, validated_request
from taxiflow.flows.train import train

NAMES = option_names(TrainRequest, TRAIN_OPTION_NAMES)


def test_the_flow_form_is_the_request_flat_and_typed():
    schema = parameter_schema(train).model_dump()["properties"]
    assert list(schema) == list(TrainRequest.model_fields)
    assert schema["taxi"]["enum"] == ["green", "yellow", "fhv", "fhvhv"]
    assert schema["val_month"]["pattern"] == r"^\d{4}-(0[1-9]|1[0-2])$"
    # A training range is one field: the run form takes `2023-01..2023-03` as the CLI's --train-months does.
    assert schema["train_month"]["pattern"] == r"^\d{4}-(0[1-9]|1[0-2])(\.\.\d{4}-(0[1-9]|1[0-2]))?$"
    assert schema["max_depth"]["anyOf"][0] == {"maximum": 100, "minimum": 1, "type": "integer"}
    assert schema["promotion_margin"]["maximum"] == 60 and schema["promote"]["enum"] == ["auto", "never", "force"]
    assert schema["features"]["items"]["enum"] == ["pu_do", "pu", "do", "distance"]
    assert schema["max_depth"]["description"] == "XGBoost max_depth (default 30)"


def test_every_field_is_a_cli_option_and_only_given_ones_are_passed():
    train_parser = _build_parser()._subparsers._group_actions[0].choices["train"]  # the `train` subcommand
    options = {option for action in train_parser._actions for option in action.option_strings}
    assert set(NAMES.values()) <= options
    args = train_parser.parse_args(["--train-month", "2023-01", "--val-month", "2023-02", "--features", "pu,do", "--no-collapse-duplicates"])
    assert request_values(args, TrainRequest) == {"train_month": "2023-01", "val_month": "2023-02", "features": ["pu", "do"], "collapse_duplicates": False}
    ranged = train_parser.parse_args(["--train-months", "2023-01..2023-03", "--val-month", "2023-04"])
    assert request_values(ranged, TrainRequest) == {"train_month": "2023-01..2023-03", "val_month": "2023-04"}
    assert validated_request(TrainRequest, request_values(ranged, TrainRequest)).train_months == ("2023-01", "2023-02", "2023-03")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_depth": "101"}, "--max-depth: expected an integer in 1..100, got '101'"),
        ({"promotion_margin": "-1"}, "--promotion-margin: expected a number in 0..60, got '-1'"),
        ({"taxi": "blue"}, "--taxi: expected one of green, yellow, fhv or fhvhv, got 'blue'"),
        ({"train_month": "2023-13"}, "--train-month: month must be 01..12, got '2023-13'"),
        ({"train_month": "2023-01..2023-13"}, "--train-month: month must be 01..12, got '2023-13'"),
        ({"train_month": "2023-01..2023-02..2023-03"}, "--train-month: expected YYYY-MM or a range YYYY-MM..YYYY-MM, got '2023-01..2023-02..2023-03'"),
        ({"train_month": "2022-12..2023-02"}, "--val-month (2023-02) must be after --train-month (2023-02)"),
        ({"engine": "dask", "source": "postgres"}, "--engine dask: the workers read month files"),
        ({"taxi": "fhv"}, "--features: fhv trips have no distance column"),
        ({"promote": "force"}, "--promote force needs --reason: who is forcing it and why"),
        ({"notify": ["webhook:"]}, "notification target 'webhook:'"),
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"dask_address": "tcp://10.0.0.5:8786"}, "--dask-address is for engine dask"),
        ({"engine": "dask", "dask_address": "10.0.0.5:8786"}, "--dask-address: String should match pattern"),
    ],
)
def test_bad_values_name_the_option_and_what_is_allowed(values, message):
    with pytest.raises(InvalidArgumentError) as caught:
        validated_request(TrainRequest, values, option_names=NAMES)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_valid_request_keeps_the_model_defaults():
    request = validated_request(TrainRequest, {"train_month": "2021-01", "val_month": "2021-02", "max_depth": "6"})
    assert (request.max_depth, request.model, request.feature_set) == (6, "xgboost", ("pu_do", "distance"))
    assert request.xgboost_params().max_depth == 6 and request.xgboost_params().learning_rate == 0.09585355369315604


def test_the_score_flow_form_and_options_come_from_one_request():
    from taxiflow.cli import SCORE_OPTION_NAMES
    from taxiflow.core.request import ScoreRequest
    from taxiflow.flows.score import score

    schema = parameter_schema(score).model_dump()
    assert list(schema["properties"]) == list(ScoreRequest.model_fields) and schema["required"] == ["month"]
    assert schema["properties"]["drift_threshold"]["maximum"] == 1 and schema["properties"]["source"]["enum"] == ["auto", "local", "tlc", "s3"]
    score_parser = _build_parser()._subparsers._group_actions[0].choices["score"]
    args = score_parser.parse_args(["--month", "2023-03", "--model-version", "2", "--output", "s3", "--experiment", "e"])
    names = option_names(ScoreRequest, SCORE_OPTION_NAMES)
    request = validated_request(ScoreRequest, request_values(args, ScoreRequest), option_names=names)
    assert (request.month, request.model_version, request.output, request.experiment_name, request.drift_threshold) == ("2023-03", 2, "s3", "e", 0.5)
    both = r"^--model-version: expected an integer in 1\.\.1000000000, got '0'; --drift-threshold: expected a number in 0\.\.1, got '1\.5'$"
    with pytest.raises(InvalidArgumentError, match=both):
        validated_request(ScoreRequest, {"month": "2023-03", "drift_threshold": "1.5", "model_version": "0"}, option_names=names)
