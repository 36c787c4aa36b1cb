"""A training range's facts: its months' rows and drops summed, each month still reported."""

import hashlib

from taxiflow.core.summary import MonthFacts, TrainingFacts, combine_month_facts, data_quality_rows


def test_a_range_sums_its_months_and_keeps_each_for_the_quality_table():
    jan = MonthFacts("2023-01", "/data/green_tripdata_2023-01.parquet", "a" * 64, 100, 90, {"duration_out_of_range": 10})
    feb = MonthFacts("2023-02", "/data/green_tripdata_2023-02.parquet", "b" * 64, 50, 40, {"duration_out_of_range": 6, "null_zone": 4})
    assert combine_month_facts("2023-01", [jan]) is jan
    both = combine_month_facts("2023-01..2023-02", [jan, feb])
    assert (both.month, both.rows_read, both.rows_kept) == ("2023-01..2023-02", 150, 130)
    assert both.dropped == {"duration_out_of_range": 16, "null_zone": 4}
    assert both.sha256 == hashlib.sha256(("a" * 64 + "b" * 64).encode()).hexdigest() != combine_month_facts("x", [feb, jan]).sha256
    val = MonthFacts("2023-03", "/data/green_tripdata_2023-03.parquet", "c" * 64, 10, 10)
    facts = TrainingFacts(taxi="green", model="xgboost", features=("pu_do",), train=both, val=val, n_features=3, rmse=5.0, mae=4.0)
    params = facts.mlflow_params()
    # File names, not where they were on this machine; the range as its label.
    assert params["train_file"] == "green_tripdata_2023-01.parquet; green_tripdata_2023-02.parquet" and params["train_month"] == "2023-01..2023-02"
    rows = data_quality_rows(facts)
    assert [(r["split"], r["month"], r["reason"], r["rows"]) for r in rows] == [
        ("train", "2023-01", "duration_out_of_range", 10),
        ("train", "2023-01", "kept", 90),
        ("train", "2023-02", "duration_out_of_range", 6),
        ("train", "2023-02", "null_zone", 4),
        ("train", "2023-02", "kept", 40),
        ("validation", "2023-03", "kept", 10),
    ]
