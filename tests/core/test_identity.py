"""Cache keys change with every input that changes the result, and with nothing else."""

from __future__ import annotations

from taxiflow.core.identity import PREPARATION_MODULES, TRAINING_MODULES, code_version, prepared_trips_key, training_key

OPTIONS = {"model": "xgboost", "features": ["pu_do", "distance"], "params": {"max_depth": 30}, "min_count": 1}


def test_the_prepared_trips_key_is_stable_and_changes_with_each_input():
    columns = ["pickup_at", "dropoff_at", "distance"]
    base = prepared_trips_key("green", "2023-01", "sha-a", columns, None)
    assert base == prepared_trips_key("green", "2023-01", "sha-a", list(columns), None)
    variants = {
        prepared_trips_key("yellow", "2023-01", "sha-a", columns, None),
        prepared_trips_key("green", "2023-02", "sha-a", columns, None),
        prepared_trips_key("green", "2023-01", "sha-b", columns, None),
        prepared_trips_key("green", "2023-01", "sha-a", columns[:2], None),
        prepared_trips_key("green", "2023-01", "sha-a", columns, 3),
    }
    assert base not in variants and len(variants) == 5


def test_the_training_key_changes_with_data_months_options_and_code():
    base = training_key("green", ("2023-01", "2023-02"), ("a", "b"), OPTIONS)
    assert base == training_key("green", ("2023-01", "2023-02"), ("a", "b"), dict(reversed(list(OPTIONS.items()))))  # key order is not identity
    assert base != training_key("green", ("2023-01", "2023-02"), ("a", "c"), OPTIONS)
    assert base != training_key("green", ("2023-01", "2023-03"), ("a", "b"), OPTIONS)
    assert base != training_key("green", ("2023-01", "2023-02"), ("a", "b"), OPTIONS | {"params": {"max_depth": 29}})


def test_the_code_version_digests_the_modules_it_names_and_they_exist():
    assert code_version(PREPARATION_MODULES) != code_version(TRAINING_MODULES)
    assert code_version(TRAINING_MODULES) == code_version(tuple(TRAINING_MODULES))
