"""Model fitting: XGBoost with the course's tuned parameters, or ordinary least squares."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import scipy.sparse as sp

from taxiflow.core.xgboost_params import XGBoostParams  # defined apart so argument checks import no numpy; re-exported

if TYPE_CHECKING:
    import polars as pl
    import xgboost as xgb  # imported where used: importing this module must stay cheap

    from taxiflow.core.features import ZoneCodeLayout, ZoneCodeMatrix


ModelKind = Literal["xgboost", "linear"]
MODEL_KINDS: tuple[str, ...] = ("xgboost", "linear")


# The precision each model is fitted and scored in. XGBoost computes in float32 whatever it is given.
# scikit-learn's sparse LinearRegression is LSQR stopped at a tolerance (1e-6) on a rank-deficient
# system (a row's one-hot columns sum to the intercept's): its answer is an iterate, not the optimum,
# and which iterate depends on the bits of the matrix. Given float32 it stops elsewhere (2021-01 ->
# 02: RMSE 8.08 instead of the course's 7.76), so linear fits get float64, as DictVectorizer builds.
FEATURE_DTYPE: dict[str, type[np.floating]] = {"xgboost": np.float32, "linear": np.float64}


def fits_collapsed_rows(model: str, requested: bool) -> bool:
    """Whether a fit sees duplicate rows collapsed into weighted ones.

    Exact for XGBoost (same gradients and hessians per split). Not for linear fits: in exact
    arithmetic the weighted rows give the same least-squares solution, but LSQR's early stop
    depends on the rows it iterates over (green 2023-01: RMSE off by 3e-4 from the course's fit on
    every row), so a linear model always fits every row, as the course does.
    """
    return requested and model == "xgboost"


class DurationModel(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def feature_dtype(self) -> type[np.floating]: ...

    def predict(self, X: sp.csr_matrix) -> np.ndarray: ...


@dataclass(frozen=True)
class LinearModel:
    """Least-squares coefficients; predicts with one sparse mat-vec product."""

    coef: np.ndarray
    intercept: float
    kind: str = "linear"

    @property
    def feature_dtype(self) -> type[np.floating]:
        return FEATURE_DTYPE[self.kind]

    def predict(self, X: sp.csr_matrix) -> np.ndarray:
        return X @ self.coef + self.intercept

    def to_json(self) -> str:
        return json.dumps({"intercept": self.intercept, "coef": self.coef.tolist()})

    @classmethod
    def from_json(cls, text: str) -> LinearModel:
        data = json.loads(text)
        return cls(coef=np.asarray(data["coef"], dtype=np.float64), intercept=float(data["intercept"]))


@dataclass(frozen=True)
class XGBoostModel:
    booster: xgb.Booster
    best_iteration: int | None
    kind: str = "xgboost"

    @property
    def feature_dtype(self) -> type[np.floating]:
        return FEATURE_DTYPE[self.kind]

    def predict(self, X: sp.csr_matrix) -> np.ndarray:
        import xgboost as xgb

        # The whole booster, as the course evaluates it (xgboost keeps the rounds after the best one).
        return self.booster.predict(xgb.DMatrix(X))


def vocabulary_min_count(model: str, params: XGBoostParams, requested: int) -> int:
    """The one-hot pruning threshold a fit uses: the user's, raised to what XGBoost can split on.

    Only for XGBoost: least squares gives every column a coefficient, so pruning would change it.
    """
    return max(requested, params.min_splittable_count()) if model == "xgboost" else requested


def predict_trips(model: DurationModel, frame, vocabulary) -> np.ndarray:
    """Predicted minutes for every row of a prepared frame, scoring each distinct input once."""
    from taxiflow.core.features import build_feature_matrix, distinct_rows

    distinct, index = distinct_rows(frame, vocabulary.features)
    return model.predict(build_feature_matrix(distinct, vocabulary, model.feature_dtype).X)[index]


class RememberingPredictor:
    """`predict_trips` for a month streamed in batches: each distinct input is scored once for the whole month.

    A batch's distinct inputs are looked up among those already scored (a join on the input
    columns); only new ones reach the model. Exact: a row's prediction depends on its inputs only.
    At most `max_remembered` inputs are kept (a month whose inputs are nearly all distinct then
    costs what per-batch scoring does, in bounded memory).
    """

    def __init__(self, model: DurationModel, vocabulary, *, max_remembered: int = 4_000_000) -> None:
        from taxiflow.core.features import required_columns

        self.model = model
        self.vocabulary = vocabulary
        self.keys = required_columns(vocabulary.features)
        self.max_remembered = max_remembered
        self._known: pl.DataFrame | None = None  # the input columns and `_prediction`
        self.predicted_rows = 0  # inputs the model scored

    def predict(self, frame) -> np.ndarray:
        import polars as pl

        from taxiflow.core.features import build_feature_matrix, distinct_rows

        distinct, index = distinct_rows(frame, self.vocabulary.features)
        if self._known is None:
            new = distinct
        else:
            looked_up = distinct.join(self._known, on=self.keys, how="left", nulls_equal=True, maintain_order="left")
            new = looked_up.filter(pl.col("_prediction").is_null()).select(self.keys)
        dtype = self.model.feature_dtype  # what the model predicts in (XGBoost float32, least squares float64)
        scored = self.model.predict(build_feature_matrix(new, self.vocabulary, dtype).X) if new.height else np.empty(0, dtype=dtype)
        self.predicted_rows += new.height
        fresh = new.with_columns(pl.Series("_prediction", np.asarray(scored, dtype=np.float64)))
        if self._known is None:
            predictions = fresh["_prediction"].to_numpy()
        else:
            # Known inputs from the lookup, new ones from the model, in `distinct`'s order.
            filled = looked_up.join(fresh, on=self.keys, how="left", nulls_equal=True, maintain_order="left", suffix="_new")
            predictions = filled.select(pl.coalesce("_prediction", "_prediction_new"))[:, 0].to_numpy()
        remembered = 0 if self._known is None else self._known.height
        if fresh.height and remembered + fresh.height <= self.max_remembered:
            self._known = fresh if self._known is None else pl.concat([self._known, fresh], rechunk=False)
        return predictions.astype(scored.dtype, copy=False)[index]


def fit_linear(X: sp.csr_matrix, y: np.ndarray, weight: np.ndarray | None = None) -> LinearModel:
    """scikit-learn's LinearRegression, as the course fits it; X must be float64 (see FEATURE_DTYPE)."""
    from sklearn.linear_model import LinearRegression

    if X.dtype != np.float64:
        raise ValueError(f"fit_linear needs a float64 matrix, got {X.dtype}: LSQR stops elsewhere in float32")

    lr = LinearRegression().fit(X, y, sample_weight=weight)
    return LinearModel(coef=np.asarray(lr.coef_, dtype=np.float64), intercept=float(lr.intercept_))


# XGBoost's `hist` keeps the histograms of up to this many tree nodes (default 65,536) to derive a
# sibling's by subtraction. With the course's max_depth 30 that cache was most of a fit's memory:
# +700 MB at its peak on the non-repeating 3.4M-row pair, +390 MB on the real one. Capped, the trees
# are the same (tests/core/test_training.py compares the saved models byte for byte) in the same time.
HIST_CACHE_NODES = 1024


def fit_xgboost(
    X_train: sp.csr_matrix,
    y_train: np.ndarray,
    X_val: sp.csr_matrix,
    y_val: np.ndarray,
    params: XGBoostParams,
    *,
    weight_train: np.ndarray | None = None,
    weight_val: np.ndarray | None = None,
    callbacks: list | None = None,
) -> XGBoostModel:
    """Boost on the training rows, stopping early on the validation rows.

    Weighted (collapsed) validation rows change the reported eval RMSE by a constant inside the
    square root, so early stopping picks the same round.
    """
    import xgboost as xgb

    dtrain = xgb.DMatrix(X_train, label=y_train, weight=weight_train)
    dval = xgb.DMatrix(X_val, label=y_val, weight=weight_val)
    booster = xgb.train(
        {**params.booster_params(), "max_cached_hist_node": HIST_CACHE_NODES},
        dtrain,
        num_boost_round=params.num_boost_round,
        evals=[(dval, "validation")],
        early_stopping_rounds=params.early_stopping_rounds or None,
        verbose_eval=False,
        callbacks=callbacks or None,  # e.g. a progress bar on a terminal
    )
    best = getattr(booster, "best_iteration", None) if params.early_stopping_rounds else None
    return XGBoostModel(booster=booster, best_iteration=best)


def fit_xgboost_on_codes(train: ZoneCodeMatrix, val: ZoneCodeMatrix, params: XGBoostParams, *, callbacks: list | None = None) -> XGBoostModel:
    """`fit_xgboost`'s model, grown on zone codes instead of one-hot columns, returned as the one-hot booster.

    Every categorical split is one-vs-rest (`max_cat_to_onehot` above the number of codes): "this
    zone pair or not", the only split a one-hot column allows. XGBoost scans one column of codes
    per node instead of thousands of sparse columns, and grows the same trees: same splits, gains
    and leaves, ties broken in the same (column) order; `tests/core/test_training.py` checks the
    predictions are bit-identical on real months. ~1.6-2x faster on the months measured.
    """
    import xgboost as xgb

    def dmatrix(m: ZoneCodeMatrix) -> xgb.DMatrix:
        return xgb.DMatrix(m.X, label=m.target, weight=m.weight, feature_types=list(m.feature_types), enable_categorical=True)

    booster = xgb.train(
        _codes_booster_params(params, max(train.max_code, val.max_code)),
        dmatrix(train),
        num_boost_round=params.num_boost_round,
        evals=[(dmatrix(val), "validation")],
        early_stopping_rounds=params.early_stopping_rounds or None,
        verbose_eval=False,
        callbacks=callbacks or None,
    )
    best = getattr(booster, "best_iteration", None) if params.early_stopping_rounds else None
    return XGBoostModel(booster=one_hot_booster(booster, train.layout), best_iteration=best)


def _codes_booster_params(params: XGBoostParams, max_code: int) -> dict[str, object]:
    """Every categorical split one-vs-rest (a one-hot split), and the capped histogram cache."""
    return {**params.booster_params(), "max_cat_to_onehot": max_code + 2, "max_cached_hist_node": HIST_CACHE_NODES}


@dataclass(frozen=True)
class DaskCodes:
    """Zone codes held by a Dask cluster's workers: dask arrays over their partitions (`io.dask_partitions`)."""

    X: object
    y: object
    weight: object | None
    layout: ZoneCodeLayout
    max_code: int


def fit_xgboost_on_dask_codes(train: DaskCodes, val: ZoneCodeMatrix, params: XGBoostParams, client: object) -> XGBoostModel:
    """`fit_xgboost_on_codes` with xgboost.dask: the training rows where they are on the cluster's workers, one model.

    Each worker builds its histograms on its rows and XGBoost sums them (allreduce) before every split,
    so the trees are grown from the same statistics as in one process. On the real pair the RMSE is
    the single-process one to 16 digits (tests/test_cli_dask.py allows 0.02). The validation month
    (this process holds it: it is evaluated here) goes to the workers in as many chunks.
    """
    import dask.array as da
    import xgboost.dask as dxgb

    partitions = max(1, len(client.scheduler_info()["workers"]))  # type: ignore[attr-defined]

    def chunked(values: np.ndarray):
        rows = max(1, -(-values.shape[0] // partitions))
        return da.from_array(values, chunks=(rows, *values.shape[1:]))

    types = list(train.layout.feature_types)
    validation = dxgb.DaskDMatrix(
        client, chunked(val.X), chunked(val.target), weight=None if val.weight is None else chunked(val.weight), feature_types=types, enable_categorical=True
    )
    out = dxgb.train(
        client,
        _codes_booster_params(params, max(train.max_code, val.max_code)),
        dxgb.DaskDMatrix(client, train.X, train.y, weight=train.weight, feature_types=types, enable_categorical=True),
        num_boost_round=params.num_boost_round,
        evals=[(validation, "validation")],
        early_stopping_rounds=params.early_stopping_rounds or None,
        verbose_eval=False,
    )
    booster = out["booster"]
    best = getattr(booster, "best_iteration", None) if params.early_stopping_rounds else None
    return XGBoostModel(booster=one_hot_booster(booster, train.layout), best_iteration=best)


def one_hot_booster(booster: xgb.Booster, codes: ZoneCodeLayout) -> xgb.Booster:
    """A booster grown on `codes` as the booster over the one-hot columns it equals (same trees, same predictions).

    A one-vs-rest split "code == c goes right, any other code left" is the one-hot split on column
    `first + c`: a stored 1.0 is not < 1.0, so it goes right; an absent entry is missing and takes
    the default (left). A numeric split keeps its threshold on the numeric feature's column.
    """
    import xgboost as xgb

    model = json.loads(booster.save_raw("json"))
    learner = model["learner"]
    for tree in learner["gradient_booster"]["model"]["trees"]:
        chosen = {
            node: tree["categories"][start : start + size]
            for node, start, size in zip(tree["categories_nodes"], tree["categories_segments"], tree["categories_sizes"], strict=True)
        }
        index, kind = tree["split_indices"], tree["split_type"]
        for node, child in enumerate(tree["left_children"]):
            if child == -1:
                continue  # a leaf
            feature = index[node]
            if kind[node] == 1:
                if len(chosen[node]) != 1 or tree["default_left"][node] != 1:
                    raise ValueError(f"tree node {node} is not a one-vs-rest split with missing values left: not a one-hot split")
                index[node] = codes.one_hot_columns[feature] + int(chosen[node][0])
                tree["split_conditions"][node], kind[node] = 1.0, 0
            else:
                index[node] = codes.one_hot_columns[feature]
        for key in ("categories", "categories_nodes", "categories_segments", "categories_sizes"):
            tree[key] = []
        tree["tree_param"]["num_feature"] = str(codes.n_columns)
    learner["learner_model_param"]["num_feature"] = str(codes.n_columns)
    learner["feature_types"], learner["feature_names"] = [], []
    one_hot = xgb.Booster()
    one_hot.load_model(bytearray(json.dumps(model).encode()))
    return one_hot
