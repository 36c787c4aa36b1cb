import dataclasses
import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.training import LinearModel, RememberingPredictor, XGBoostParams, fit_linear


def test_course_parameters_are_the_defaults():
    params = XGBoostParams()
    assert params.booster_params() == {
        "learning_rate": 0.09585355369315604,
        "max_depth": 30,
        "min_child_weight": 1.060597050922164,
        "reg_alpha": 0.018060244040060163,
        "reg_lambda": 0.011658731377413597,
        "seed": 42,
        "objective": "reg:squarederror",
        "tree_method": "hist",
    }
    assert (params.num_boost_round, params.early_stopping_rounds) == (100, 20)


def test_overrides_replace_only_what_is_given():
    params = XGBoostParams().with_overrides(max_depth=6, learning_rate=None, num_boost_round=7)
    # None keeps the default: every other value is still the course's (literal values, not the class's own).
    assert params.booster_params() == {
        "learning_rate": 0.09585355369315604,
        "max_depth": 6,
        "min_child_weight": 1.060597050922164,
        "reg_alpha": 0.018060244040060163,
        "reg_lambda": 0.011658731377413597,
        "seed": 42,
        "objective": "reg:squarederror",
        "tree_method": "hist",
    }
    assert (params.num_boost_round, params.early_stopping_rounds) == (7, 20)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_depth": 0}, r"^max_depth must be >= 1$"),
        ({"learning_rate": -1.0}, r"^learning_rate must be > 0$"),
        ({"num_boost_round": 0}, r"^num_boost_round must be >= 1$"),
        ({"gamma": 1.0, "eta": 0.3}, r"^unknown XGBoost parameter\(s\): eta, gamma$"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(InvalidArgumentError, match=message):
        XGBoostParams().with_overrides(**override)


def test_linear_model_recovers_known_coefficients_and_round_trips():
    X = sp.random(500, 4, density=0.5, random_state=1, format="csr")
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 4.0
    model = fit_linear(X, y)
    # Recovered by a least-squares solver, so up to its convergence: not bit-exact.
    assert model.intercept == pytest.approx(4.0)
    np.testing.assert_allclose(model.coef, [1.0, -2.0, 0.5, 3.0], atol=1e-8)
    restored = LinearModel.from_json(model.to_json())
    # JSON keeps a float64 exactly (shortest repr round-trips): the restored model is the same model.
    assert restored.intercept == model.intercept
    np.testing.assert_array_equal(restored.coef, model.coef)
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))
    np.testing.assert_allclose(restored.predict(X), y)


def _splits(model) -> list[str]:
    """Each tree's text dump with its leaf values blanked: split features, thresholds and shape."""
    return [re.sub(r"leaf=[-+0-9.e]+", "leaf", tree) for tree in model.booster.get_dump()]


def _leaves(model) -> np.ndarray:
    return np.array([float(v) for tree in model.booster.get_dump() for v in re.findall(r"leaf=([-+0-9.e]+)", tree)])


def test_collapsed_weighted_rows_grow_the_same_trees(green_prepared):
    """Collapsing duplicate inputs into weighted mean-label rows gives the same trees for squared error.

    Same splits, same thresholds, same stopping round: exactly. The leaf values are sums of float32
    gradients taken over other rows in another order, so they (and the predictions) may differ in
    the last float32 bits; on this pair they differ by at most 2.4e-7 min per leaf and 1.9e-6 min
    per prediction. The tolerance below is float32 rounding for values up to ~60 min, far below any
    different split (which moves predictions by minutes).
    """
    from taxiflow.core.features import build_feature_matrix, collapse_duplicate_rows, fit_vocabulary
    from taxiflow.core.training import fit_xgboost

    features = ("pu_do", "distance")
    train, val = green_prepared("2023-01").frame, green_prepared("2023-02").frame
    vocabulary = fit_vocabulary(train, features)
    full_train, full_val = build_feature_matrix(train, vocabulary), build_feature_matrix(val, vocabulary)
    small_train = build_feature_matrix(collapse_duplicate_rows(train, features), vocabulary)
    small_val = build_feature_matrix(collapse_duplicate_rows(val, features), vocabulary)
    assert small_train.X.shape[0] < 0.7 * full_train.X.shape[0]
    assert small_train.weight.sum() == full_train.X.shape[0]

    params = XGBoostParams(max_depth=8, num_boost_round=12)
    full = fit_xgboost(full_train.X, full_train.y, full_val.X, full_val.y, params)
    collapsed = fit_xgboost(small_train.X, small_train.y, small_val.X, small_val.y, params, weight_train=small_train.weight, weight_val=small_val.weight)
    assert collapsed.best_iteration == full.best_iteration
    assert _splits(collapsed) == _splits(full)
    np.testing.assert_allclose(_leaves(collapsed), _leaves(full), rtol=0, atol=1e-5)
    np.testing.assert_allclose(collapsed.predict(full_val.X), full.predict(full_val.X), rtol=0, atol=1e-5)


def test_linear_fits_see_every_row_in_float64(green_prepared):
    """LSQR's early stop depends on the matrix's bits and rows: float32 or collapsed rows land elsewhere."""
    from taxiflow.core.features import build_feature_matrix, collapse_duplicate_rows, fit_vocabulary
    from taxiflow.core.training import FEATURE_DTYPE, fits_collapsed_rows

    assert fits_collapsed_rows("xgboost", True) and not fits_collapsed_rows("linear", True)
    assert not fits_collapsed_rows("xgboost", False)
    assert FEATURE_DTYPE == {"xgboost": np.float32, "linear": np.float64}

    features = ("pu_do", "distance")
    train = green_prepared("2021-01").frame
    vocabulary = fit_vocabulary(train, features)
    full = build_feature_matrix(train, vocabulary, np.float64)
    # Distances enter as the file's float64 values, as DictVectorizer stores them.
    distance_column = full.X[:, vocabulary.feature_names.index("trip_distance")].toarray().ravel()
    np.testing.assert_array_equal(distance_column, train["distance"].to_numpy())
    with pytest.raises(ValueError, match=r"^fit_linear needs a float64 matrix, got float32: LSQR stops elsewhere in float32$"):
        fit_linear(build_feature_matrix(train, vocabulary).X, full.y)
    # Why: the collapsed fit's iterate differs from the all-rows fit (they agree only in exact arithmetic).
    collapsed = build_feature_matrix(collapse_duplicate_rows(train, features), vocabulary, np.float64)
    every_row, weighted = fit_linear(full.X, full.y), fit_linear(collapsed.X, collapsed.y, collapsed.weight)
    assert every_row.intercept != weighted.intercept


def test_scoring_distinct_inputs_equals_scoring_every_row(green_prepared):
    from taxiflow.core.features import build_feature_matrix, distinct_rows, fit_vocabulary
    from taxiflow.core.training import fit_xgboost, predict_trips

    train, val = green_prepared("2023-01").frame, green_prepared("2023-02").frame
    vocabulary = fit_vocabulary(train, ("pu_do", "distance"))
    x_train, x_val = build_feature_matrix(train, vocabulary), build_feature_matrix(val, vocabulary)
    model = fit_xgboost(x_train.X, x_train.y, x_val.X, x_val.y, XGBoostParams(max_depth=6, num_boost_round=5))
    distinct, index = distinct_rows(val, vocabulary.features)
    assert index.shape == (val.height,)
    keys = ["pickup_zone", "dropoff_zone", "distance"]
    # The distinct inputs are the month's distinct (pair, distance) rows, counted independently here...
    assert distinct.height == val.select(keys).unique().height < val.height
    # ...and gathering them back by `index` rebuilds every row, in order.
    assert distinct.select(keys)[index].equals(val.select(keys))
    np.testing.assert_array_equal(predict_trips(model, val, vocabulary), model.predict(x_val.X))

    # Streamed in batches, each distinct input of the whole month reaches the model once, with the same predictions.
    remembering = RememberingPredictor(model, vocabulary)
    batches = [remembering.predict(val.slice(start, 4_000)) for start in range(0, val.height, 4_000)]
    np.testing.assert_array_equal(np.concatenate(batches), model.predict(x_val.X))
    assert remembering.predicted_rows == distinct.height and all(b.dtype == np.float32 for b in batches)
    forgetful = RememberingPredictor(model, vocabulary, max_remembered=0)
    np.testing.assert_array_equal(np.concatenate([forgetful.predict(val.slice(start, 4_000)) for start in range(0, val.height, 4_000)]), model.predict(x_val.X))
    assert forgetful.predicted_rows > distinct.height


def _with_feature_names(tree: str, names) -> str:
    """A tree dump with the column numbers replaced by the columns' names."""
    return re.sub(r"\[f(\d+)<", lambda m: f"[{names[int(m.group(1))]}<", tree)


def test_categories_xgboost_cannot_split_on_are_left_out_without_changing_the_model(green_prepared):
    """A category seen fewer than min_child_weight times can't be split on: dropping it is exact."""
    from taxiflow.core.features import build_feature_matrix, collapse_duplicate_rows, fit_vocabulary
    from taxiflow.core.training import fit_xgboost, predict_trips, vocabulary_min_count

    params = XGBoostParams(num_boost_round=8)  # the course's depth and min_child_weight (1.06)
    assert vocabulary_min_count("xgboost", params, 1) == 2
    assert vocabulary_min_count("xgboost", params, 5) == 5
    assert vocabulary_min_count("linear", params, 1) == 1, "least squares uses every column"
    assert vocabulary_min_count("xgboost", XGBoostParams(min_child_weight=1.0), 1) == 1
    assert vocabulary_min_count("xgboost", XGBoostParams(min_child_weight=3.5), 1) == 4

    features = ("pu_do", "distance")
    train, val = green_prepared("2023-01").frame, green_prepared("2023-02").frame
    predictions = {}
    for min_count in (1, vocabulary_min_count("xgboost", params, 1)):
        vocabulary = fit_vocabulary(train, features, min_count=min_count)
        x_train, x_val = (build_feature_matrix(collapse_duplicate_rows(f, features), vocabulary) for f in (train, val))
        model = fit_xgboost(x_train.X, x_train.y, x_val.X, x_val.y, params, weight_train=x_train.weight, weight_val=x_val.weight)
        # Trees with the column numbers replaced by the columns' names.
        trees = [_with_feature_names(tree, vocabulary.feature_names) for tree in model.booster.get_dump()]
        predictions[min_count] = (vocabulary, predict_trips(model, val, vocabulary), trees)
    (full, full_pred, full_trees), (pruned, pruned_pred, pruned_trees) = predictions[1], predictions[2]
    # What was pruned: exactly the pairs seen once in the training month (counted independently here).
    pairs = train.group_by("pickup_zone", "dropoff_zone").len()
    assert pruned.pruned == pairs.filter(pairs["len"] < 2).height > 0.3 * full.size
    assert pruned.size + pruned.pruned == full.size
    # Same trees (split features named, since column positions differ) and the same predictions, bit for bit.
    assert pruned_trees == full_trees
    np.testing.assert_array_equal(pruned_pred, full_pred)


def _canonical_tree(dump: str, numeric_columns: set[int]) -> tuple:
    """A tree dump as nested tuples that do not depend on node numbering or on which child is "yes".

    A one-hot split is (column, subtree of the rows holding that category, subtree of the others); a
    numeric split is (column, threshold, subtree below, subtree above, where missing values go).
    """
    nodes = {}
    for line in dump.splitlines():
        node, _, rest = line.strip().partition(":")
        if rest.startswith("leaf="):
            nodes[int(node)] = ("leaf", rest.removeprefix("leaf="))
        else:
            split = re.fullmatch(r"\[f(\d+)<([^\]]+)\] yes=(\d+),no=(\d+),missing=(\d+)", rest)
            assert split is not None, line
            column, threshold, yes, no, missing = split.groups()
            nodes[int(node)] = ("split", int(column), float(threshold), int(yes), int(no), int(missing))

    def canon(node: int) -> tuple:
        entry = nodes[node]
        if entry[0] == "leaf":
            return entry
        _, column, threshold, yes, no, missing = entry
        if column in numeric_columns:
            return ("numeric", column, threshold, canon(yes), canon(no), missing == yes)
        holding = yes if 1.0 < threshold else no  # where a stored 1.0 goes; absent entries take `missing`
        assert missing == (no if holding == yes else yes), f"rows without the category must take the other branch: {entry}"
        return ("one-hot", column, canon(holding), canon(missing))

    return canon(0)


@pytest.mark.parametrize(
    ("months", "features", "rounds"),
    [(("2023-01", "2023-02"), ("pu_do", "distance"), 12), (("2021-01", "2021-02"), ("pu_do", "distance"), 6), (("2023-01", "2023-02"), ("pu", "do"), 12)],
)
def test_trees_grown_on_zone_codes_are_the_one_hot_trees(green_prepared, months, features, rounds):
    """XGBoost on one column of zone codes (one-vs-rest splits) grows the one-hot model: same trees, bit-identical predictions.

    The course's depth and min_child_weight, taxiflow's vocabulary (categories no split can use left
    out: they get codes no split can single out) and collapsed rows, early stopping on the
    validation month: everything as `taxiflow train` fits.
    """
    from taxiflow.core.features import FeatureMatrix, ZoneCodeMatrix
    from taxiflow.core.request import TrainRequest
    from taxiflow.core.training import predict_trips
    from taxiflow.core.training_plan import fit_duration_model, fit_matrix, fit_plan_vocabulary, plan_training

    train, val = green_prepared(months[0]), green_prepared(months[1])
    plan = plan_training(TrainRequest(train_month=months[0], val_month=months[1], features=list(features), num_boost_round=rounds))
    assert plan.zone_codes and plan.min_count_applied == 2
    vocabulary = fit_plan_vocabulary(plan, train)
    assert vocabulary.pruned > 0, "some categories are left out: their codes are exercised"
    codes = (fit_matrix(plan, train, vocabulary), fit_matrix(plan, val, vocabulary))
    one_hot_plan = dataclasses.replace(plan, zone_codes=False)
    one_hot = (fit_matrix(one_hot_plan, train, vocabulary), fit_matrix(one_hot_plan, val, vocabulary))
    assert all(isinstance(m, ZoneCodeMatrix) for m in codes) and all(isinstance(m, FeatureMatrix) for m in one_hot)
    assert codes[0].X.shape == (one_hot[0].rows, len(features))

    on_codes = fit_duration_model(plan, *codes)
    on_one_hot = fit_duration_model(one_hot_plan, *one_hot)
    assert on_codes.best_iteration == on_one_hot.best_iteration
    numeric = {vocabulary.feature_names.index("trip_distance")} if "distance" in features else set()
    canonical = [[_canonical_tree(tree, numeric) for tree in m.booster.get_dump()] for m in (on_codes, on_one_hot)]
    assert canonical[0] == canonical[1]
    np.testing.assert_array_equal(predict_trips(on_codes, val.frame, vocabulary), predict_trips(on_one_hot, val.frame, vocabulary))


def test_zone_codes_only_where_they_are_exact(green_prepared):
    from taxiflow.core.features import FeatureMatrix, fit_vocabulary
    from taxiflow.core.request import TrainRequest
    from taxiflow.core.training_plan import fit_matrix, plan_training

    def plan(**options):
        return plan_training(TrainRequest(train_month="2023-01", val_month="2023-02", **options))

    # A vocabulary threshold above what XGBoost can split on leaves out splittable categories: codes would split them.
    assert not plan(min_count=5).zone_codes
    # Dask fits only on zone codes: refused before any month is read.
    from taxiflow.core.training_plan import check_dask_plan

    check_dask_plan(plan(engine="dask"))
    with pytest.raises(InvalidArgumentError, match=r"^engine dask fits XGBoost on zone codes: keep min_count at most what XGBoost can split \(2 here\)$"):
        check_dask_plan(plan(engine="dask", min_count=5))
    assert not plan(model="linear").zone_codes
    assert plan(min_count=2).zone_codes
    # Nulls in a feature column (possible with a relaxed contract): the one-hot matrix, which treats them as missing.
    frame = green_prepared("2023-01").frame
    with_null = frame.with_columns(frame["distance"].scatter(0, None))
    trips = dataclasses.replace(green_prepared("2023-01"), frame=with_null)
    vocabulary = fit_vocabulary(frame, ("pu_do", "distance"), min_count=2)
    assert isinstance(fit_matrix(plan(), trips, vocabulary), FeatureMatrix)


def test_a_capped_histogram_cache_grows_the_same_model(green_prepared, monkeypatch):
    """HIST_CACHE_NODES only bounds memory: the saved model is byte for byte the one XGBoost's default cache grows."""
    from taxiflow.core import training
    from taxiflow.core.request import TrainRequest
    from taxiflow.core.training_plan import fit_duration_model, fit_matrix, fit_plan_vocabulary, plan_training

    train, val = green_prepared("2023-01"), green_prepared("2023-02")
    plan = plan_training(TrainRequest(train_month="2023-01", val_month="2023-02", num_boost_round=15))
    vocabulary = fit_plan_vocabulary(plan, train)
    matrices = (fit_matrix(plan, train, vocabulary), fit_matrix(plan, val, vocabulary))
    capped = fit_duration_model(plan, *matrices)
    monkeypatch.setattr(training, "HIST_CACHE_NODES", 65536)  # XGBoost's default
    default = fit_duration_model(plan, *matrices)
    assert training.HIST_CACHE_NODES != 1024 and capped.booster.num_boosted_rounds() == 15
    model = capped.booster.save_raw("json")
    assert model == default.booster.save_raw("json")
    # The cap is exercised: these trees have thousands of nodes (~4,400 here), far more than it keeps.
    trees = json.loads(model)["learner"]["gradient_booster"]["model"]["trees"]
    assert min(len(tree["left_children"]) for tree in trees) > 2 * 1024


def test_months_encoded_apart_grow_the_model_of_the_months_together(green_prepared):
    """Dask's path in one process: each month collapsed and coded apart with the merged vocabulary, rows stacked.

    Duplicates across months stay separate weighted rows (same summed gradients), so the trees are
    the ones grown on the months together up to float summation order.
    """
    from taxiflow.core.features import ZoneCodeMatrix, count_categories, merge_category_counts
    from taxiflow.core.metrics import regression_metrics
    from taxiflow.core.preparation import combine_prepared
    from taxiflow.core.request import TrainRequest
    from taxiflow.core.training import predict_trips
    from taxiflow.core.training_plan import fit_code_matrix, fit_duration_model, fit_matrix, fit_plan_vocabulary, plan_training, plan_vocabulary_from_counts

    plan = plan_training(TrainRequest(train_month="2023-01..2023-02", val_month="2023-03", num_boost_round=15))
    months, val = [green_prepared("2023-01"), green_prepared("2023-02")], green_prepared("2023-03")
    together = combine_prepared(months)
    assert together.rows_kept == sum(m.rows_kept for m in months) and together.rows_read == sum(m.rows_read for m in months)
    vocabulary = fit_plan_vocabulary(plan, together)
    reference = fit_duration_model(plan, fit_matrix(plan, together, vocabulary), fit_matrix(plan, val, vocabulary))

    apart, left_out = plan_vocabulary_from_counts(plan, merge_category_counts([count_categories(m.frame, plan.features) for m in months]))
    assert apart == vocabulary
    parts = [fit_code_matrix(plan, m, apart, left_out) for m in months]
    stacked = ZoneCodeMatrix(
        X=np.vstack([p.X for p in parts]),
        y=np.concatenate([p.target for p in parts]),
        weight=np.concatenate([p.weight for p in parts]),
        feature_types=parts[0].feature_types,
        one_hot_columns=parts[0].one_hot_columns,
        n_columns=parts[0].n_columns,
    )
    model = fit_duration_model(plan, stacked, fit_code_matrix(plan, val, apart, left_out))
    actual = val.frame["duration_min"].to_numpy()
    expected, got = predict_trips(reference, val.frame, vocabulary), predict_trips(model, val.frame, apart)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert abs(regression_metrics(actual, got).rmse - regression_metrics(actual, expected).rmse) < 1e-4
