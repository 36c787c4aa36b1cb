import re

import pytest

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.months import MAX_TRAIN_MONTHS, Month, last_training_month, parse_month_range, parse_training_months


def test_parse_and_format_round_trip():
    assert str(Month.parse("2023-01")) == "2023-01"
    assert Month.parse("2023-12").shift(1) == Month(2024, 1)
    assert Month.parse("2023-01").shift(-2) == Month(2022, 11)


# Each malformed value: the message names the argument, what was expected, and the value given.
MALFORMED = {
    "2023-1": "expected a month as YYYY-MM (e.g. 2023-01), got '2023-1'",
    "2023/01": "expected a month as YYYY-MM (e.g. 2023-01), got '2023/01'",
    "23-01": "expected a month as YYYY-MM (e.g. 2023-01), got '23-01'",
    "": "expected a month as YYYY-MM (e.g. 2023-01), got ''",
    "january": "expected a month as YYYY-MM (e.g. 2023-01), got 'january'",
    "2023-13": "month must be 01..12, got '2023-13'",
    "2023-00": "month must be 01..12, got '2023-00'",
    "2008-12": "TLC trip records start in 2009, got '2008-12'",
}


@pytest.mark.parametrize("text", list(MALFORMED))
def test_malformed_months_name_the_argument(text):
    with pytest.raises(InvalidArgumentError, match="^" + re.escape(f"train_month: {MALFORMED[text]}") + "$"):
        Month.parse(text, argument="train_month")


def test_validation_month_must_follow_training_month():
    assert parse_training_months("2023-01", "2023-02") == ([Month(2023, 1)], Month(2023, 2))
    with pytest.raises(InvalidArgumentError, match=r"^val_month \(2023-01\) must be after train_month \(2023-02\)"):
        parse_training_months("2023-02", "2023-01")
    with pytest.raises(InvalidArgumentError, match=r"^val_month \(2023-02\) must be after train_month \(2023-02\)"):
        parse_training_months("2023-02", "2023-02")
    # Each month is checked under its own argument name.
    with pytest.raises(InvalidArgumentError, match=r"^val_month: month must be 01\.\.12, got '2023-13'$"):
        parse_training_months("2023-01", "2023-13")


def test_a_training_range_is_each_of_its_months_and_validation_follows_its_last():
    assert parse_training_months("2022-11..2023-02", "2023-03") == ([Month(2022, 11), Month(2022, 12), Month(2023, 1), Month(2023, 2)], Month(2023, 3))
    assert parse_training_months("2023-01..2023-01", "2023-02") == ([Month(2023, 1)], Month(2023, 2))
    assert last_training_month("2022-11..2023-02") == "2023-02" and last_training_month("2023-01") == "2023-01"
    with pytest.raises(InvalidArgumentError, match=r"^val_month \(2023-02\) must be after train_month \(2023-03\)"):
        parse_training_months("2023-01..2023-03", "2023-02")
    with pytest.raises(InvalidArgumentError, match=r"^train_month: range '2023-03\.\.2023-01' ends before it starts$"):
        parse_training_months("2023-03..2023-01", "2023-04")
    with pytest.raises(InvalidArgumentError, match=rf"^train_month: range '2020-01\.\.2023-01' has 37 months, at most {MAX_TRAIN_MONTHS}$"):
        parse_training_months("2020-01..2023-01", "2023-02")
    with pytest.raises(InvalidArgumentError, match=r"^train_month: month must be 01\.\.12, got '2023-13'$"):
        parse_training_months("2023-01..2023-13", "2024-02")


def test_month_ranges():
    assert [str(m) for m in parse_month_range("2022-11..2023-02")] == ["2022-11", "2022-12", "2023-01", "2023-02"]
    assert [str(m) for m in parse_month_range("2023-05, 2023-01,2023-05")] == ["2023-01", "2023-05"]
    with pytest.raises(InvalidArgumentError, match=r"^months: range '2023-03\.\.2023-01' ends before it starts$"):
        parse_month_range("2023-03..2023-01")
    with pytest.raises(InvalidArgumentError, match=r"^months: expected a month as YYYY-MM \(e\.g\. 2023-01\), got '2023'$"):
        parse_month_range("2023-03..2023")
