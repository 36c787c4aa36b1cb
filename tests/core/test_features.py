"""The vectorized one-hot must equal scikit-learn's DictVectorizer on real data."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.feature_extraction import DictVectorizer

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.features import WEIGHT, build_feature_matrix, collapse_duplicate_rows, fit_vocabulary, parse_features, required_columns
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, DURATION, PICKUP_ZONE


def _course_dicts(frame, features):
    # The course's row-by-row construction, used here only as the reference.
    pdf = frame.to_pandas()
    records = []
    for pu, do, dist in zip(pdf["pickup_zone"], pdf["dropoff_zone"], pdf["distance"]):
        row = {}
        if "pu_do" in features:
            row["PU_DO"] = f"{pu}_{do}"
        if "pu" in features:
            row["PULocationID"] = str(pu)
        if "do" in features:
            row["DOLocationID"] = str(do)
        if "distance" in features:
            row["trip_distance"] = dist
        records.append(row)
    return records


@pytest.mark.parametrize("features", [("pu_do", "distance"), ("pu", "do"), ("distance", "pu_do", "do")])
def test_matches_dictvectorizer_on_real_months(green_prepared, features):
    train = green_prepared("2023-01").frame.sample(8000, seed=1)
    val = green_prepared("2023-02").frame.sample(8000, seed=2)
    dv = DictVectorizer()
    X_ref_train = dv.fit_transform(_course_dicts(train, features))
    X_ref_val = dv.transform(_course_dicts(val, features))

    vocabulary = fit_vocabulary(train, features)
    assert list(vocabulary.feature_names) == list(dv.get_feature_names_out())
    X_train = build_feature_matrix(train, vocabulary).X
    X_val = build_feature_matrix(val, vocabulary).X
    for ours, ref in ((X_train, X_ref_train), (X_val, X_ref_val)):
        assert ours.shape == ref.shape
        ref = ref.tocsr()
        ref.sort_indices()
        # Same structure (explicit zeros included) and same values.
        np.testing.assert_array_equal(ours.indptr, ref.indptr)
        np.testing.assert_array_equal(ours.indices, ref.indices)
        np.testing.assert_allclose(ours.data, ref.data.astype(np.float32))
    # Unseen pairs in the validation month contribute nothing: some rows hold only the distance.
    if features == ("pu_do", "distance"):
        assert (np.diff(X_val.indptr) == 1).any()


def test_vocabulary_round_trips_through_json(green_prepared):
    frame = green_prepared("2023-01").frame
    vocabulary = fit_vocabulary(frame, ("pu_do", "distance"))
    restored = type(vocabulary).from_json(vocabulary.to_json())
    assert restored == vocabulary
    assert (build_feature_matrix(frame, restored).X != build_feature_matrix(frame, vocabulary).X).nnz == 0


def test_min_count_prunes_rare_categories(green_prepared):
    frame = green_prepared("2023-01").frame
    full = fit_vocabulary(frame, ("pu_do", "distance"))
    pruned = fit_vocabulary(frame, ("pu_do", "distance"), min_count=5)
    assert full.size == 5702
    assert 1 < pruned.size < full.size
    counts = frame.group_by("pickup_zone", "dropoff_zone").len()
    assert pruned.size - 1 == counts.filter(counts["len"] >= 5).height
    assert (full.pruned, pruned.pruned) == (0, counts.filter(counts["len"] < 5).height)


def test_feature_lists_are_validated():
    assert parse_features("pu_do, distance") == ("pu_do", "distance")
    assert parse_features(["pu", "do", "pu"]) == ("pu", "do")
    assert required_columns(("pu", "do")) == ["pickup_zone", "dropoff_zone"]
    with pytest.raises(InvalidArgumentError, match="unknown feature.*zone"):
        parse_features("pu_do,zone")
    with pytest.raises(InvalidArgumentError, match="got nothing"):
        parse_features(" , ")


@pytest.mark.parametrize("features", [("pu_do", "distance"), ("pu", "do"), ("distance",)])
def test_collapsed_rows_are_the_distinct_inputs_with_their_mean_duration_and_count(green_prepared, features):
    frame = green_prepared("2021-01").frame
    keys = required_columns(features)
    as_matrix_sees = [pl.col(DISTANCE).cast(pl.Float32)] if DISTANCE in keys else []  # the matrix holds float32
    expected = frame.with_columns(as_matrix_sees).group_by(keys).agg(pl.col(DURATION).mean(), pl.len().cast(pl.Float32).alias(WEIGHT))
    collapsed = collapse_duplicate_rows(frame, features)
    assert collapsed.schema == frame.select(*keys, DURATION).with_columns(pl.lit(0.0, pl.Float32).alias(WEIGHT)).schema
    assert_frame_equal(collapsed.with_columns(as_matrix_sees).sort(keys), expected.sort(keys), check_exact=False, rel_tol=1e-9)
    assert collapsed[WEIGHT].sum() == frame.height


def test_collapsing_rows_with_missing_inputs_groups_the_missing_together():
    frame = pl.DataFrame(
        {PICKUP_ZONE: [1, 1, None, None, 70000], DROPOFF_ZONE: [2, 2, 3, 3, 4], DISTANCE: [1.5, 1.5, 2.0, 2.0, 0.0], DURATION: [10.0, 20.0, 5.0, 7.0, 3.0]},
        schema_overrides={PICKUP_ZONE: pl.Int32, DROPOFF_ZONE: pl.Int32},
    )
    collapsed = collapse_duplicate_rows(frame, ("pu_do", "distance")).sort(PICKUP_ZONE, nulls_last=True)
    assert collapsed[PICKUP_ZONE].to_list() == [1, 70000, None]
    assert collapsed[DURATION].to_list() == [15.0, 3.0, 6.0] and collapsed[WEIGHT].to_list() == [2.0, 1.0, 2.0]
