"""The vectorized one-hot must equal scikit-learn's DictVectorizer on real data."""

import json

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
    for pu, do, dist in zip(pdf["pickup_zone"], pdf["dropoff_zone"], pdf["distance"], strict=True):
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
        # Same structure (explicit zeros included) and the same values, bit for bit: ours are
        # float32 (what XGBoost computes in), DictVectorizer's float64 rounded to float32.
        np.testing.assert_array_equal(ours.indptr, ref.indptr)
        np.testing.assert_array_equal(ours.indices, ref.indices)
        assert ours.data.dtype == np.float32
        np.testing.assert_array_equal(ours.data, ref.data.astype(np.float32))
    # Unseen pairs in the validation month contribute nothing: some rows hold only the distance.
    if features == ("pu_do", "distance"):
        assert (np.diff(X_val.indptr) == 1).any()


def test_vocabulary_round_trips_through_json(green_prepared):
    frame = green_prepared("2023-01").frame
    vocabulary = fit_vocabulary(frame, ("pu_do", "distance"))
    text = vocabulary.to_json()
    # The JSON holds the features and every column name, in DictVectorizer's (sorted) order.
    assert json.loads(text) == {"features": ["pu_do", "distance"], "feature_names": sorted(vocabulary.feature_names)}
    restored = type(vocabulary).from_json(text)
    assert (restored.features, restored.feature_names) == (vocabulary.features, vocabulary.feature_names)
    # The restored vocabulary rebuilds its lookups from the names alone: the matrix must be identical.
    before, after = build_feature_matrix(frame, vocabulary).X, build_feature_matrix(frame, restored).X
    assert after.shape == before.shape == (65_946, 5_702)  # rows kept and one-hot features, from the data README
    for attribute in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(after, attribute), getattr(before, attribute))


def test_min_count_prunes_rare_categories(green_prepared):
    frame = green_prepared("2023-01").frame
    full = fit_vocabulary(frame, ("pu_do", "distance"))
    pruned = fit_vocabulary(frame, ("pu_do", "distance"), min_count=5)
    assert full.size == 5702
    assert 1 < pruned.size < full.size
    counts = frame.group_by("pickup_zone", "dropoff_zone").len()
    frequent = counts.filter(counts["len"] >= 5)
    # Exactly the pairs seen at least 5 times survive, plus the distance column.
    expected = sorted([f"PU_DO={pu}_{do}" for pu, do in zip(frequent["pickup_zone"], frequent["dropoff_zone"], strict=True)] + ["trip_distance"])
    assert list(pruned.feature_names) == expected
    assert (full.pruned, pruned.pruned) == (0, counts.filter(counts["len"] < 5).height)


def test_feature_lists_are_validated():
    assert parse_features("pu_do, distance") == ("pu_do", "distance")
    assert parse_features(["pu", "do", "pu"]) == ("pu", "do")
    assert required_columns(("pu", "do")) == ["pickup_zone", "dropoff_zone"]
    with pytest.raises(InvalidArgumentError, match=r"^features: unknown feature\(s\) zone; expected a comma list of pu_do, pu, do, distance$"):
        parse_features("pu_do,zone")
    with pytest.raises(InvalidArgumentError, match=r"^features: expected a comma list of pu_do, pu, do, distance, got nothing$"):
        parse_features(" , ")


@pytest.mark.parametrize("features", [("pu_do", "distance"), ("pu", "do"), ("distance",)])
def test_collapsed_rows_are_the_distinct_inputs_with_their_mean_duration_and_count(green_prepared, features):
    frame = green_prepared("2021-01").frame
    keys = required_columns(features)
    as_matrix_sees = [pl.col(DISTANCE).cast(pl.Float32)] if DISTANCE in keys else []  # the matrix holds float32
    expected = frame.with_columns(as_matrix_sees).group_by(keys).agg(pl.col(DURATION).mean(), pl.len().cast(pl.Float32).alias(WEIGHT)).sort(keys)
    collapsed = collapse_duplicate_rows(frame, features)
    assert collapsed.schema == frame.select(*keys, DURATION).with_columns(pl.lit(0.0, pl.Float32).alias(WEIGHT)).schema
    collapsed = collapsed.with_columns(as_matrix_sees).sort(keys)
    # The distinct inputs and their counts: exactly.
    assert_frame_equal(collapsed.select(*keys, WEIGHT), expected.select(*keys, WEIGHT), check_exact=True)
    # The mean durations: not claimed bit-exact. A group's sum may be accumulated in another order
    # than the reference's, which moves a float64 mean by a few ulps (~1e-16 relative); 1e-12 allows
    # that, while a wrong group or a missed row moves a mean by far more.
    np.testing.assert_allclose(collapsed[DURATION].to_numpy(), expected[DURATION].to_numpy(), rtol=1e-12, atol=0)
    assert collapsed[WEIGHT].sum() == frame.height


def test_collapsing_rows_with_missing_inputs_groups_the_missing_together():
    frame = pl.DataFrame(
        {PICKUP_ZONE: [1, 1, None, None, 70000], DROPOFF_ZONE: [2, 2, 3, 3, 4], DISTANCE: [1.5, 1.5, 2.0, 2.0, 0.0], DURATION: [10.0, 20.0, 5.0, 7.0, 3.0]},
        schema_overrides={PICKUP_ZONE: pl.Int32, DROPOFF_ZONE: pl.Int32},
    )
    collapsed = collapse_duplicate_rows(frame, ("pu_do", "distance")).sort(PICKUP_ZONE, nulls_last=True)
    assert collapsed[PICKUP_ZONE].to_list() == [1, 70000, None]
    assert collapsed[DURATION].to_list() == [15.0, 3.0, 6.0] and collapsed[WEIGHT].to_list() == [2.0, 1.0, 2.0]


@pytest.mark.parametrize("features", [("pu_do", "distance"), ("pu", "do", "distance")])
def test_plain_numpy_columns_give_the_same_rows_as_a_frame(green_prepared, features):
    """Serving builds rows from a request's numpy columns; training from a polars frame: one definition, same matrix."""
    from taxiflow.core.features import one_hot_rows

    vocabulary = fit_vocabulary(green_prepared("2023-01").frame, features, min_count=5)
    val = green_prepared("2023-02").frame
    for dtype in (np.float32, np.float64):
        expected = build_feature_matrix(val, vocabulary, dtype).X
        columns = {
            PICKUP_ZONE: val[PICKUP_ZONE].to_numpy().astype(np.int32),
            DROPOFF_ZONE: val[DROPOFF_ZONE].to_numpy().astype(np.int32),
            DISTANCE: val[DISTANCE].to_numpy().astype(np.float64),
        }
        got = one_hot_rows(columns, vocabulary, dtype, n=val.height)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert (got != expected).nnz == 0 and np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.indices, expected.indices)
        assert expected.nnz < val.height * len(features), "some pairs are outside the pruned vocabulary: the absent-column path is exercised"


@pytest.mark.parametrize("features, min_count", [(("pu_do", "distance"), 1), (("pu_do", "distance"), 2), (("pu", "do", "distance"), 3)])
def test_a_vocabulary_from_months_counted_apart_is_the_one_fitted_on_them_together(green_prepared, features, min_count):
    """Dask workers count their months; the merged counts must give the vocabulary of all the rows."""
    from taxiflow.core.features import count_categories, left_out_categories, merge_category_counts, vocabulary_from_counts

    months = [green_prepared(m).frame for m in ("2023-01", "2023-02", "2023-03")]
    together = fit_vocabulary(pl.concat(months), features, min_count=min_count)
    counts = merge_category_counts([count_categories(frame, features) for frame in months])
    apart = vocabulary_from_counts(counts, min_count=min_count)
    assert apart.feature_names == together.feature_names and apart.pruned == together.pruned
    # What is left out is exactly what the vocabulary prunes, counted independently here.
    left_out = left_out_categories(counts, min_count=min_count)
    if "pu_do" in features:
        pairs = pl.concat(months).group_by(PICKUP_ZONE, DROPOFF_ZONE).len()
        assert left_out["pu_do"].size == pairs.filter(pl.col("len") < min_count).height == together.pruned
    with pytest.raises(ValueError, match="same features"):
        merge_category_counts([count_categories(months[0], features), count_categories(months[0], ("pu", "distance"))])


def test_partitions_code_each_left_out_category_alike(green_prepared):
    """A category too rare for the vocabulary gets one code in every partition; one unseen in training gets the code after them."""
    from taxiflow.core.features import build_zone_code_matrix, count_categories, left_out_categories, merge_category_counts, vocabulary_from_counts

    features = ("pu_do", "distance")
    jan, feb = green_prepared("2023-01").frame, green_prepared("2023-02").frame
    counts = merge_category_counts([count_categories(f, features) for f in (jan, feb)])
    vocabulary, left_out = vocabulary_from_counts(counts, min_count=3), left_out_categories(counts, min_count=3)
    kept = sum(name.startswith("PU_DO=") for name in vocabulary.feature_names)
    coded = []
    for frame in (jan, feb):
        matrix = build_zone_code_matrix(frame, vocabulary, left_out=left_out)
        pairs = frame.select(PICKUP_ZONE, DROPOFF_ZONE).with_columns(code=pl.Series(matrix.X[:, matrix.feature_types.index("c")]))
        coded.append({(pu, do): code for pu, do, code in pairs.filter(pl.col("code") >= kept).unique().iter_rows()})
    in_both = coded[0].keys() & coded[1].keys()
    assert in_both and all(coded[0][pair] == coded[1][pair] for pair in in_both), "one code per left-out category in every partition"
    union = coded[0] | coded[1]
    assert len(set(union.values())) == len(union) == left_out["pu_do"].size, "no two categories share a code"
    unseen = pl.DataFrame({PICKUP_ZONE: [999], DROPOFF_ZONE: [999], DISTANCE: [1.0]}, schema_overrides={PICKUP_ZONE: pl.Int32, DROPOFF_ZONE: pl.Int32})
    assert build_zone_code_matrix(unseen, vocabulary, left_out=left_out).X[0, 0] == kept + left_out["pu_do"].size
