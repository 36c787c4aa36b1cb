import math

import pytest

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.promotion import ChampionScore, decide_promotion

CHAMPION = ChampionScore(version="3", rmse=5.25)


def test_first_model_promotes():
    d = decide_promotion(5.19, None)
    assert (d.outcome, d.promote, d.champion_version, d.improvement) == ("promoted", True, None, None)
    assert d.reason == "first model: there was no champion"


def test_a_better_model_promotes_and_a_worse_one_is_kept():
    better = decide_promotion(5.19, CHAMPION)
    assert (better.outcome, better.promote) == ("promoted", True)
    assert better.improvement == pytest.approx(0.06, abs=1e-12)
    assert better.reason == "RMSE 5.1900 beats champion v3's 5.2500 by 0.0600 (margin 0)"
    worse = decide_promotion(6.0, CHAMPION)
    assert (worse.outcome, worse.promote) == ("kept", False)
    assert worse.reason == "RMSE 6.0000 is worse than champion v3's 5.2500 by 0.7500"


def test_a_tie_keeps_the_champion():
    d = decide_promotion(5.25, CHAMPION)
    assert (d.outcome, d.promote, d.improvement) == ("kept", False, 0.0)
    assert "a tie keeps the champion" in d.reason


def test_margin_is_inclusive_and_a_smaller_gain_is_kept():
    champion = ChampionScore("3", 5.5)
    assert decide_promotion(5.25, champion, margin=0.25).promote  # exactly the margin (both exact in binary)
    small = decide_promotion(5.3, champion, margin=0.25)
    assert (small.outcome, small.promote) == ("kept", False)
    assert "less than the margin 0.25" in small.reason


def test_never_keeps_even_a_better_model_and_even_the_first():
    assert decide_promotion(1.0, CHAMPION, policy="never").outcome == "kept"
    first = decide_promotion(1.0, None, policy="never")
    assert (first.outcome, first.promote) == ("kept", False)


def test_force_promotes_a_worse_model_and_records_why():
    d = decide_promotion(9.0, CHAMPION, policy="force", forced_reason="alice: rollback of a data bug")
    assert (d.outcome, d.promote) == ("forced", True)
    assert d.reason == "forced: alice: rollback of a data bug"
    assert d.improvement == pytest.approx(-3.75)


def test_an_unscorable_champion_is_not_evaluated_and_kept():
    broken = ChampionScore("3", None, error="model files missing")
    d = decide_promotion(5.0, broken)
    assert (d.outcome, d.promote) == ("not-evaluated", False)
    assert d.reason == "champion v3 could not be scored: model files missing"
    assert decide_promotion(5.0, ChampionScore("3", math.nan)).outcome == "not-evaluated"
    assert decide_promotion(5.0, broken, policy="force").promote


@pytest.mark.parametrize("rmse", [math.nan, math.inf])
def test_a_non_finite_challenger_never_promotes(rmse):
    assert not decide_promotion(rmse, None).promote
    assert not decide_promotion(rmse, CHAMPION).promote


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "sometimes"}, r"promote: expected one of auto, never, force, got 'sometimes'"),
        ({"margin": -0.1}, r"margin must be a finite number >= 0, got -0.1"),
    ],
)
def test_bad_policy_or_margin(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        decide_promotion(5.0, CHAMPION, **kwargs)
