"""Which pairs a backfill runs and how it reports them: the rules, without any server."""

from __future__ import annotations

import pytest

from taxiflow.core.backfill import (
    FAILED,
    SKIPPED,
    TRAINED,
    UP_TO_DATE,
    MonthPair,
    PairFacts,
    PairOutcome,
    failure_summary,
    month_pairs,
    outcome_of_run,
    plan_pair,
)
from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.months import Month
from taxiflow.core.request import BackfillRequest, validated_request

PAIR = MonthPair("2023-01", "2023-02")
NEVER_RUN = PairFacts(identical_version=None, inputs_known=True, last_state=None)


def test_a_range_gives_consecutive_pairs_across_a_year_end():
    assert [str(p) for p in month_pairs(Month(2022, 11), Month(2023, 2))] == ["2022-11->2022-12", "2022-12->2023-01", "2023-01->2023-02"]
    assert month_pairs(Month(2023, 1), Month(2023, 1)) == []


@pytest.mark.parametrize(
    ("mode", "facts", "runs", "reason"),
    [
        ("missing", NEVER_RUN, True, "no committed version"),
        ("missing", PairFacts("4", True, "COMPLETED"), False, "up to date: v4"),
        ("missing", PairFacts(None, False, None), True, "not fetched yet"),
        ("failed", PairFacts(None, True, "FAILED"), True, "last run failed"),
        ("failed", PairFacts(None, True, "CRASHED"), True, "last run crashed"),
        ("failed", PairFacts(None, True, "COMPLETED"), False, "last run completed"),
        ("failed", NEVER_RUN, False, "never happened"),
        ("all", PairFacts("4", True, "COMPLETED"), True, "mode all"),
    ],
)
def test_each_mode_runs_exactly_the_pairs_it_promises(mode, facts, runs, reason):
    plan = plan_pair(PAIR, mode, facts)
    assert plan.run is runs and reason in plan.reason


def test_outcomes_say_whether_a_pair_trained_or_was_up_to_date():
    summary = {"rmse": 6.03449, "model_version": "3", "promoted": True, "gate": "promoted"}
    trained = outcome_of_run(PAIR, summary)
    assert (trained.status, trained.version, trained.promoted, trained.row()["rmse"]) == (TRAINED, "3", True, 6.0345)
    cached = outcome_of_run(PAIR, summary | {"cached": True})
    # Returned without training: it was promoted back then, not by this backfill.
    assert (cached.status, cached.promoted) == (UP_TO_DATE, False)


def test_the_failure_summary_names_each_failed_pair_and_why():
    outcomes = [
        PairOutcome(PAIR, TRAINED, 6.0, "1"),
        PairOutcome(MonthPair("2023-02", "2023-03"), FAILED, detail="green_tripdata_2023-03.parquet: not a readable parquet file"),
        PairOutcome(MonthPair("2023-03", "2023-04"), SKIPPED, detail="mode failed"),
    ]
    assert failure_summary(outcomes) == "1 of 3 pair(s) failed: 2023-02->2023-03: green_tripdata_2023-03.parquet: not a readable parquet file"
    assert failure_summary(outcomes[:1]) is None


def test_the_request_checks_the_range_and_every_training_option_as_train_does():
    names = {"from_month": "--from", "to_month": "--to"}
    request = validated_request(BackfillRequest, {"from_month": "2023-01", "to_month": "2023-04", "model": "linear", "max_concurrency": 3})
    assert [str(p) for p in request.pairs()] == ["2023-01->2023-02", "2023-02->2023-03", "2023-03->2023-04"]
    pair = request.pair_request(request.pairs()[1], retrain=True)
    assert (pair.train_month, pair.val_month, pair.model, pair.retrain) == ("2023-02", "2023-03", "linear", True)
    assert list(BackfillRequest.model_fields)[:6] == ["taxi", "from_month", "to_month", "mode", "max_concurrency", "dry_run"]
    with pytest.raises(InvalidArgumentError, match="--to: expected a month after --from"):
        validated_request(BackfillRequest, {"from_month": "2023-03", "to_month": "2023-03"}, option_names=names)
    with pytest.raises(InvalidArgumentError, match="promote force"):
        validated_request(BackfillRequest, {"from_month": "2023-01", "to_month": "2023-03", "promote": "force"})
    with pytest.raises(InvalidArgumentError, match="fhv trips have no distance"):
        validated_request(BackfillRequest, {"taxi": "fhv", "from_month": "2023-01", "to_month": "2023-03"})
    with pytest.raises(InvalidArgumentError, match="max_concurrency: expected an integer in 1..8, got 0"):
        validated_request(BackfillRequest, {"from_month": "2023-01", "to_month": "2023-03", "max_concurrency": 0})
    with pytest.raises(InvalidArgumentError, match="train_month"):  # a pair's own fields are not backfill options
        validated_request(BackfillRequest, {"from_month": "2023-01", "to_month": "2023-03", "train_month": "2023-01"})
