"""One-hot features with scikit-learn DictVectorizer semantics, built column-wise.

The course builds a dict per row and fits a DictVectorizer. This module gives the same matrix
(same column names and order, explicit values, unseen categories contributing nothing) from
integer zone columns with numpy gathers: no per-row Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, DURATION, PICKUP_ZONE

FeatureName = Literal["pu_do", "pu", "do", "distance"]
FEATURE_NAMES: tuple[str, ...] = ("pu_do", "pu", "do", "distance")
DEFAULT_FEATURES: tuple[str, ...] = ("pu_do", "distance")

# DictVectorizer column prefixes, as the course names its dict keys.
_CATEGORICAL_PREFIX = {"pu_do": "PU_DO", "pu": "PULocationID", "do": "DOLocationID"}
_NUMERIC_NAME = {"distance": "trip_distance"}
_CATEGORICAL_ZONES = {"pu_do": (PICKUP_ZONE, DROPOFF_ZONE), "pu": (PICKUP_ZONE,), "do": (DROPOFF_ZONE,)}
_NUMERIC_COLUMN = {"distance": DISTANCE}


def parse_features(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`"pu_do,distance"` or a list -> validated, de-duplicated feature names in the given order."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise InvalidArgumentError(f"features: expected a comma list of {', '.join(FEATURE_NAMES)}, got nothing")
    unknown = [s for s in items if s not in FEATURE_NAMES]
    if unknown:
        raise InvalidArgumentError(
            f"features: unknown feature(s) {', '.join(unknown)}; expected a comma list of {', '.join(FEATURE_NAMES)}"
        )
    return tuple(dict.fromkeys(items))


def required_columns(features: tuple[str, ...]) -> list[str]:
    """Canonical trip columns a feature set needs (besides the timestamps used for the target)."""
    cols: list[str] = []
    for name in features:
        cols.extend(_CATEGORICAL_ZONES.get(name, ()))
        if name in _NUMERIC_COLUMN:
            cols.append(_NUMERIC_COLUMN[name])
    return list(dict.fromkeys(cols))


def _zone_key(zones: tuple[np.ndarray, ...]) -> np.ndarray:
    # One integer per category: pu * 2**16 + do for pairs. Zone IDs are < 2**16 (TLC uses 1..265).
    key = zones[0].astype(np.int64)
    for z in zones[1:]:
        key = key * 65536 + z.astype(np.int64)
    return key


def _category_label(key: int, width: int) -> str:
    parts = []
    for _ in range(width):
        parts.append(str(key % 65536))
        key //= 65536
    return "_".join(reversed(parts))


@dataclass(frozen=True)
class FeatureVocabulary:
    """Fitted feature space: requested features and the output column names, in DictVectorizer order."""

    features: tuple[str, ...]
    feature_names: tuple[str, ...]
    _lookups: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Per categorical feature: sorted category keys and their output column indices.
        lookups = {}
        prefixes = {v: k for k, v in _CATEGORICAL_PREFIX.items()}
        collected: dict[str, tuple[list[int], list[int]]] = {}
        for column, name in enumerate(self.feature_names):
            prefix, sep, label = name.partition("=")
            if sep and prefix in prefixes:
                feature = prefixes[prefix]
                key = 0
                for part in label.split("_"):
                    key = key * 65536 + int(part)
                keys, cols = collected.setdefault(feature, ([], []))
                keys.append(key)
                cols.append(column)
        for feature in self.features:
            if feature in _CATEGORICAL_PREFIX:
                keys, cols = collected.get(feature, ([], []))
                order = np.argsort(np.asarray(keys, dtype=np.int64))
                lookups[feature] = (np.asarray(keys, dtype=np.int64)[order], np.asarray(cols, dtype=np.int64)[order])
        object.__setattr__(self, "_lookups", lookups)

    @property
    def size(self) -> int:
        return len(self.feature_names)

    def column_of(self, feature: str, keys: np.ndarray) -> np.ndarray:
        """Output column per row for a categorical feature; -1 where the category is unseen."""
        sorted_keys, cols = self._lookups[feature]
        if sorted_keys.size == 0:
            return np.full(keys.shape, -1, dtype=np.int64)
        pos = np.searchsorted(sorted_keys, keys)
        pos = np.minimum(pos, sorted_keys.size - 1)
        return np.where(sorted_keys[pos] == keys, cols[pos], -1)

    def to_json(self) -> str:
        return json.dumps({"features": list(self.features), "feature_names": list(self.feature_names)})

    @classmethod
    def from_json(cls, text: str) -> "FeatureVocabulary":
        data = json.loads(text)
        return cls(features=tuple(data["features"]), feature_names=tuple(data["feature_names"]))


def fit_vocabulary(frame: pl.DataFrame, features: tuple[str, ...], *, min_count: int = 1) -> FeatureVocabulary:
    """Fit the one-hot vocabulary on training rows.

    `min_count` > 1 drops categories seen fewer times (fewer columns, faster training);
    1 keeps DictVectorizer's semantics exactly.
    """
    names: list[str] = []
    for feature in features:
        if feature in _CATEGORICAL_PREFIX:
            zone_cols = _CATEGORICAL_ZONES[feature]
            zones = frame.select(zone_cols).drop_nulls()
            keys = _zone_key(tuple(zones[c].to_numpy() for c in zone_cols))
            uniq, counts = np.unique(keys, return_counts=True)
            prefix = _CATEGORICAL_PREFIX[feature]
            names.extend(f"{prefix}={_category_label(int(k), len(zone_cols))}" for k in uniq[counts >= min_count])
        else:
            names.append(_NUMERIC_NAME[feature])
    # DictVectorizer orders columns by feature name (string order).
    return FeatureVocabulary(features=tuple(features), feature_names=tuple(sorted(names)))


WEIGHT = "weight"


def collapse_duplicate_rows(frame: pl.DataFrame, features: tuple[str, ...]) -> pl.DataFrame:
    """One row per distinct feature input, labelled with the mean duration and weighted by its count.

    For squared error this is exact: a group's summed gradient w * (p - mean) equals the sum of its
    rows' gradients, and its hessian is w, so XGBoost grows the same trees from fewer rows (least
    squares gets the same normal equations). Real months hold 1.2-1.7x duplicate rows.
    """
    keys = required_columns(features)
    return frame.group_by(keys).agg(pl.col(DURATION).mean(), pl.len().cast(pl.Float32).alias(WEIGHT))


@dataclass(frozen=True)
class FeatureMatrix:
    X: sp.csr_matrix
    y: np.ndarray | None
    weight: np.ndarray | None = None


def build_feature_matrix(frame: pl.DataFrame, vocabulary: FeatureVocabulary) -> FeatureMatrix:
    """Rows -> CSR matrix (float32) in the vocabulary's columns; target from `duration_min` if present."""
    n = frame.height
    name_index = {name: i for i, name in enumerate(vocabulary.feature_names)}
    col_blocks: list[np.ndarray] = []
    val_blocks: list[np.ndarray] = []
    for feature in vocabulary.features:
        if feature in _CATEGORICAL_PREFIX:
            zone_cols = _CATEGORICAL_ZONES[feature]
            zones = [frame[c] for c in zone_cols]
            valid = np.ones(n, dtype=bool)
            for z in zones:
                valid &= ~z.is_null().to_numpy()
            keys = _zone_key(tuple(z.fill_null(0).to_numpy() for z in zones))
            cols = np.where(valid, vocabulary.column_of(feature, keys), -1)
            col_blocks.append(cols)
            val_blocks.append(np.ones(n, dtype=np.float32))
        else:
            # Stored explicitly, zeros included (XGBoost treats a stored 0 as a value, an absent one as missing).
            col_blocks.append(np.full(n, name_index[_NUMERIC_NAME[feature]], dtype=np.int64))
            val_blocks.append(frame[_NUMERIC_COLUMN[feature]].cast(pl.Float32).fill_null(np.nan).to_numpy())
    cols = np.column_stack(col_blocks)
    vals = np.column_stack(val_blocks)
    if cols.shape[1] > 1:
        # Sorted column indices within each row, as a canonical CSR matrix has them.
        order = np.argsort(cols, axis=1, kind="stable")
        cols = np.take_along_axis(cols, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
    present = cols >= 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(present.sum(axis=1), out=indptr[1:])
    X = sp.csr_matrix((vals[present], cols[present].astype(np.int32), indptr), shape=(n, vocabulary.size))
    y = frame[DURATION].to_numpy() if DURATION in frame.columns else None
    weight = frame[WEIGHT].to_numpy() if WEIGHT in frame.columns else None
    return FeatureMatrix(X=X, y=y, weight=weight)
