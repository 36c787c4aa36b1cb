import pytest

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.months import Month, parse_month_pair


def test_parse_and_format_round_trip():
    assert str(Month.parse("2023-01")) == "2023-01"
    assert Month.parse("2023-12").shift(1) == Month(2024, 1)
    assert Month.parse("2023-01").shift(-2) == Month(2022, 11)


@pytest.mark.parametrize("text", ["2023-1", "2023/01", "23-01", "2023-13", "2023-00", "", "2008-12", "january"])
def test_malformed_months_name_the_argument(text):
    with pytest.raises(InvalidArgumentError, match="train_month"):
        Month.parse(text, argument="train_month")


def test_validation_month_must_follow_training_month():
    assert parse_month_pair("2023-01", "2023-02") == (Month(2023, 1), Month(2023, 2))
    with pytest.raises(InvalidArgumentError, match=r"val_month \(2023-01\) must be after train_month \(2023-02\)"):
        parse_month_pair("2023-02", "2023-01")
    with pytest.raises(InvalidArgumentError, match="must be after"):
        parse_month_pair("2023-02", "2023-02")


def test_month_ranges():
    from taxiflow.core.months import parse_month_range

    assert [str(m) for m in parse_month_range("2022-11..2023-02")] == ["2022-11", "2022-12", "2023-01", "2023-02"]
    assert [str(m) for m in parse_month_range("2023-05, 2023-01,2023-05")] == ["2023-01", "2023-05"]
    with pytest.raises(InvalidArgumentError, match="ends before it starts"):
        parse_month_range("2023-03..2023-01")
    with pytest.raises(InvalidArgumentError, match="months: expected a month as YYYY-MM"):
        parse_month_range("2023-03..2023")
