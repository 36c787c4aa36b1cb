"""One-hot features with scikit-learn DictVectorizer semantics, built column-wise.

The course builds a dict per row and fits a DictVectorizer. This module gives the same matrix
(same column names and order, explicit values, unseen categories contributing nothing) from
integer zone columns with numpy gathers: no per-row Python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

# The names and the columns they need live apart so argument checks import no polars.
from taxiflow.core.feature_names import (
    _CATEGORICAL_PREFIX,
    _CATEGORICAL_ZONES,
    _NUMERIC_COLUMN,
    _NUMERIC_NAME,
    DEFAULT_FEATURES,
    FEATURE_NAMES,
    FeatureName,
    parse_features,
    required_columns,
)
from taxiflow.core.schema import DISTANCE, DURATION

__all__ = ["DEFAULT_FEATURES", "FEATURE_NAMES", "FeatureName", "parse_features", "required_columns"]


@dataclass(frozen=True)
class FeatureVocabulary:
    """Fitted feature space: requested features and the output column names, in DictVectorizer order."""

    features: tuple[str, ...]
    feature_names: tuple[str, ...]
    pruned: int = field(default=0, compare=False)  # categories seen in training but below min_count
    _lookups: dict = field(default_factory=dict, compare=False, repr=False)
    _row_order: tuple = field(default=(), compare=False, repr=False)
    _numeric_column: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Per categorical feature: a dense table zone(s) -> output column (-1: unseen), and the
        # feature's position in a row. Sorted names put each feature's columns in one contiguous
        # block, so every row lists its features in the same order: no per-row sort is needed.
        prefixes = {v: k for k, v in _CATEGORICAL_PREFIX.items()}
        collected: dict[str, list[tuple[tuple[int, ...], int]]] = {}
        first_column: dict[str, int] = {}
        for column, name in enumerate(self.feature_names):
            prefix, sep, label = name.partition("=")
            feature = prefixes.get(prefix) if sep else next((f for f, n in _NUMERIC_NAME.items() if n == name), None)
            if feature is None:
                continue
            first_column.setdefault(feature, column)
            if sep:
                collected.setdefault(feature, []).append((tuple(int(p) for p in label.split("_")), column))
        lookups = {}
        for feature in self.features:
            if feature in _CATEGORICAL_PREFIX:
                entries = collected.get(feature, [])
                width = len(_CATEGORICAL_ZONES[feature])
                size = max((max(zones) for zones, _ in entries), default=0) + 1
                table = np.full((size,) * width, -1, dtype=np.int32)
                for zones, column in entries:
                    table[zones] = column
                lookups[feature] = table
        order = sorted(self.features, key=lambda f: first_column.get(f, len(self.feature_names)))
        object.__setattr__(self, "_lookups", lookups)
        object.__setattr__(self, "_row_order", tuple(order))
        # Found once here, not per matrix: serving builds a matrix per request.
        object.__setattr__(self, "_numeric_column", {f: first_column[f] for f in self.features if f not in _CATEGORICAL_PREFIX and f in first_column})

    @property
    def size(self) -> int:
        return len(self.feature_names)

    def column_of(self, feature: str, zones: list[np.ndarray], valid: np.ndarray) -> np.ndarray:
        """Output column per row for a categorical feature; -1 where unseen, null or out of range."""
        table = self._lookups[feature]
        inside = valid.copy()
        for z in zones:
            inside &= (z >= 0) & (z < table.shape[0])
        columns = np.full(valid.shape, -1, dtype=np.int32)
        columns[inside] = table[tuple(z[inside] for z in zones)]
        return columns

    def to_json(self) -> str:
        return json.dumps({"features": list(self.features), "feature_names": list(self.feature_names)})

    @classmethod
    def from_json(cls, text: str) -> FeatureVocabulary:
        data = json.loads(text)
        return cls(features=tuple(data["features"]), feature_names=tuple(data["feature_names"]))


_ZONE_RADIX = 1 << 16  # zone IDs are small integers: a tuple of them packs into one int64 key


def _packed_zone_key(zone_cols: list[str]) -> pl.Expr:
    key = pl.lit(0, dtype=pl.Int64)
    for c in zone_cols:
        key = key * _ZONE_RADIX + pl.col(c).cast(pl.Int64)
    return key


def _unpack_zone_key(keys: np.ndarray, width: int) -> list[np.ndarray]:
    rest, decoded = keys, []
    for _ in range(width):
        decoded.append(rest % _ZONE_RADIX)
        rest = rest // _ZONE_RADIX
    return decoded[::-1]


@dataclass(frozen=True)
class CategoryCounts:
    """How often each category of each categorical feature occurs in some training rows.

    A category is its zone tuple packed into one int64 (hashing one int64 column is about twice as
    fast as hashing the tuple's columns; prepared zones are 1..265, far below the radix). Counts of
    partitions add up (`merge_category_counts`): a vocabulary fitted from partitions' merged counts
    is the one fitted on their rows together.
    """

    features: tuple[str, ...]
    counts: dict[str, tuple[np.ndarray, np.ndarray]]  # categorical feature -> (distinct keys, ascending; their counts)


def count_categories(frame: pl.DataFrame, features: tuple[str, ...]) -> CategoryCounts:
    """The distinct categories among the non-null rows of each categorical feature, and how often each occurs."""
    counts = {}
    for feature in features:
        if feature in _CATEGORICAL_PREFIX:
            zone_cols = list(_CATEGORICAL_ZONES[feature])
            grouped = frame.select(zone_cols).drop_nulls().group_by(_packed_zone_key(zone_cols).alias("key")).len().sort("key")
            counts[feature] = (grouped["key"].to_numpy(), grouped["len"].to_numpy().astype(np.int64))
    return CategoryCounts(tuple(features), counts)


def merge_category_counts(parts: list[CategoryCounts]) -> CategoryCounts:
    if not parts or any(p.features != parts[0].features for p in parts):
        raise ValueError("category counts to merge must exist and be of the same features")
    merged = {}
    for feature in parts[0].counts:
        keys = np.concatenate([p.counts[feature][0] for p in parts])
        counts = np.concatenate([p.counts[feature][1] for p in parts])
        distinct, index = np.unique(keys, return_inverse=True)
        merged[feature] = (distinct, np.bincount(index, weights=counts, minlength=distinct.size).astype(np.int64))
    return CategoryCounts(parts[0].features, merged)


def vocabulary_from_counts(counts: CategoryCounts, *, min_count: int = 1) -> FeatureVocabulary:
    """The one-hot vocabulary of the counted rows: categories seen at least `min_count` times, in DictVectorizer's order."""
    names: list[str] = []
    pruned = 0
    for feature in counts.features:
        if feature in _CATEGORICAL_PREFIX:
            keys, seen = counts.counts[feature]
            keep = seen >= min_count
            pruned += int((~keep).sum())
            zones = _unpack_zone_key(keys[keep], len(_CATEGORICAL_ZONES[feature]))
            labels = ["_".join(map(str, combo)) for combo in zip(*(z.tolist() for z in zones), strict=True)]
            names.extend(f"{_CATEGORICAL_PREFIX[feature]}={label}" for label in labels)
        else:
            names.append(_NUMERIC_NAME[feature])
    # DictVectorizer orders columns by feature name (string order).
    return FeatureVocabulary(features=counts.features, feature_names=tuple(sorted(names)), pruned=pruned)


def left_out_categories(counts: CategoryCounts, *, min_count: int) -> dict[str, np.ndarray]:
    """Per categorical feature, the categories `vocabulary_from_counts` leaves out (packed keys, ascending)."""
    return {feature: keys[seen < min_count] for feature, (keys, seen) in counts.counts.items()}


def fit_vocabulary(frame: pl.DataFrame, features: tuple[str, ...], *, min_count: int = 1) -> FeatureVocabulary:
    """Fit the one-hot vocabulary on training rows.

    `min_count` > 1 drops categories seen fewer times (fewer columns, faster training);
    1 keeps DictVectorizer's semantics exactly.
    """
    return vocabulary_from_counts(count_categories(frame, features), min_count=min_count)


WEIGHT = "weight"
_KEY_ZONE_BITS = 16  # a packed row key holds each zone ID in 16 bits and the distance's float32 in 32


def _within(column: pl.Series, low: int, high: int) -> bool:
    """Every value of a numeric column without nulls is in [low, high)."""
    lo, hi = column.min(), column.max()
    return isinstance(lo, int | float) and isinstance(hi, int | float) and low <= lo and hi < high


def _packed_row_key(frame: pl.DataFrame, keys: list[str]) -> pl.Series | None:
    """One uint64 per row, equal exactly when the rows' feature inputs are; None if they don't fit.

    Only XGBoost fits collapse rows, and XGBoost sees distances as float32, so their float32 bits
    are the right identity. Hashing
    one integer instead of three columns' row encoding is faster and needs about a third less
    memory. They don't fit with nulls, zone IDs outside 0..65535, or more than 64 bits of inputs.
    """
    zones = [k for k in keys if k != DISTANCE]
    if frame.height == 0 or len(zones) * _KEY_ZONE_BITS + (32 if DISTANCE in keys else 0) > 64:
        return None
    if frame.select(pl.sum_horizontal(pl.col(keys).null_count())).item():
        return None
    if not all(_within(frame[z], 0, 1 << _KEY_ZONE_BITS) for z in zones):
        return None
    key = pl.lit(0, dtype=pl.UInt64)
    for z in zones:
        key = key * pl.lit(1 << _KEY_ZONE_BITS, dtype=pl.UInt64) + pl.col(z).cast(pl.UInt64)
    if DISTANCE in keys:
        bits = pl.Series(frame[DISTANCE].cast(pl.Float32).to_numpy().view(np.uint32))
        key = key * pl.lit(1 << 32, dtype=pl.UInt64) + bits.cast(pl.UInt64)
    return frame.select(key.alias("_key"))["_key"]


def _unpack_row_key(key: np.ndarray, keys: list[str], schema: pl.Schema) -> list[pl.Series]:
    columns = {}
    if DISTANCE in keys:
        columns[DISTANCE] = pl.Series(DISTANCE, (key & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32))
        key = key >> np.uint64(32)
    for z in reversed([k for k in keys if k != DISTANCE]):
        columns[z] = pl.Series(z, key & np.uint64((1 << _KEY_ZONE_BITS) - 1))
        key = key >> np.uint64(_KEY_ZONE_BITS)
    return [columns[k].cast(schema[k]) for k in keys]


def collapse_duplicate_rows(frame: pl.DataFrame, features: tuple[str, ...]) -> pl.DataFrame:
    """One row per distinct feature input, labelled with the mean duration and weighted by its count.

    For squared error this is exact: a group's summed gradient w * (p - mean) equals the sum of its
    rows' gradients, and its hessian is w, so XGBoost grows the same trees from fewer rows. Real
    months hold 1.2-1.7x duplicate rows. (Least squares has the same normal equations, but see
    `training.fits_collapsed_rows` for why linear fits don't use this.)
    """
    keys = required_columns(features)
    aggregations = (pl.col(DURATION).mean(), pl.len().cast(pl.Float32).alias(WEIGHT))
    key = _packed_row_key(frame, keys)
    if key is None:
        return frame.group_by(keys).agg(*aggregations)
    grouped = frame.select(DURATION).with_columns(key).group_by("_key").agg(*aggregations)
    return grouped.with_columns(_unpack_row_key(grouped["_key"].to_numpy(), keys, frame.schema)).select(*keys, DURATION, WEIGHT)


def distinct_rows(frame: pl.DataFrame, features: tuple[str, ...]) -> tuple[pl.DataFrame, np.ndarray]:
    """The distinct feature inputs, and for every row the index of its distinct input.

    Identical inputs get identical predictions, so scoring the distinct ones and gathering back is
    exact, and cheaper wherever trips repeat (pairs with the same distance).
    """
    keys = required_columns(features)
    distinct = frame.select(keys).unique().with_row_index("_distinct")
    index = frame.select(keys).join(distinct, on=keys, how="left", nulls_equal=True, maintain_order="left")["_distinct"]
    return distinct.drop("_distinct"), index.to_numpy()


class _FitRows:
    """What both matrix forms share: their row count and, for a fit, their target."""

    X: np.ndarray | sp.csr_matrix
    y: np.ndarray | None

    @property
    def rows(self) -> int:
        return self.X.shape[0]

    @property
    def target(self) -> np.ndarray:
        """`y`, for a fit: a matrix built from rows without durations has none."""
        if self.y is None:
            raise ValueError(f"no target: the rows had no {DURATION} column")
        return self.y


def _target_and_weight(frame: pl.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    y = frame[DURATION].to_numpy() if DURATION in frame.columns else None
    weight = frame[WEIGHT].to_numpy() if WEIGHT in frame.columns else None
    return y, weight


@dataclass(frozen=True)
class FeatureMatrix(_FitRows):
    X: sp.csr_matrix
    y: np.ndarray | None
    weight: np.ndarray | None = None


def build_feature_matrix(frame: pl.DataFrame, vocabulary: FeatureVocabulary, dtype: type[np.floating] = np.float32) -> FeatureMatrix:
    """Rows -> CSR matrix in the vocabulary's columns; target from `duration_min` if present.

    float32 is what XGBoost computes in; a linear fit needs float64 (see `training.FEATURE_DTYPE`).
    """
    value_type = pl.Float64 if np.dtype(dtype) == np.float64 else pl.Float32
    columns: dict[str, np.ndarray] = {}
    for feature in vocabulary._row_order:
        if feature in _CATEGORICAL_PREFIX:
            for c in _CATEGORICAL_ZONES[feature]:
                columns[c] = frame[c].fill_null(-1).to_numpy()
        else:
            columns[_NUMERIC_COLUMN[feature]] = frame[_NUMERIC_COLUMN[feature]].cast(value_type).fill_null(np.nan).to_numpy()
    y, weight = _target_and_weight(frame)
    return FeatureMatrix(X=one_hot_rows(columns, vocabulary, dtype, n=frame.height), y=y, weight=weight)


def one_hot_rows(columns: dict[str, np.ndarray], vocabulary: FeatureVocabulary, dtype: type[np.floating], *, n: int) -> sp.csr_matrix:
    """The feature rows from plain numpy columns: zone IDs (-1 for null) and numbers (NaN for null).

    The one definition of the features: training reaches it through `build_feature_matrix`; serving
    calls it directly, as a request's few rows would spend most of their time in polars' per-call cost.
    """
    col_blocks: list[np.ndarray] = []
    val_blocks: list[np.ndarray] = []
    everywhere = np.ones(n, dtype=bool)
    for feature in vocabulary._row_order:
        if feature in _CATEGORICAL_PREFIX:
            # Null (-1) and unknown zones fall outside the lookup table: no column, as DictVectorizer does.
            col_blocks.append(vocabulary.column_of(feature, [columns[c] for c in _CATEGORICAL_ZONES[feature]], everywhere))
            val_blocks.append(np.ones(n, dtype=dtype))
        else:
            # Stored explicitly, zeros included (XGBoost treats a stored 0 as a value, an absent one as missing).
            col_blocks.append(np.full(n, vocabulary._numeric_column[feature], dtype=np.int32))
            val_blocks.append(np.asarray(columns[_NUMERIC_COLUMN[feature]], dtype=dtype))
    cols = np.column_stack(col_blocks)
    vals = np.column_stack(val_blocks)
    present = cols >= 0
    if present.all():
        indptr = np.arange(0, cols.size + 1, cols.shape[1], dtype=np.int64)
        indices, data = cols.ravel(), vals.ravel()
    else:
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(present.sum(axis=1), out=indptr[1:])
        indices, data = cols[present], vals[present]
    return sp.csr_matrix((data, indices, indptr), shape=(n, vocabulary.size))


@dataclass(frozen=True)
class ZoneCodeLayout:
    """What a zone-code fit needs besides the rows: each column's kind and where it sits among the one-hot columns."""

    feature_types: tuple[str, ...]  # "c" categorical, "q" numeric: XGBoost's feature types
    one_hot_columns: tuple[int, ...]
    n_columns: int  # the one-hot matrix's width


def zone_code_layout(vocabulary: FeatureVocabulary) -> ZoneCodeLayout:
    names = vocabulary.feature_names
    types: list[str] = []
    one_hot: list[int] = []
    for feature in vocabulary._row_order:
        if feature in _CATEGORICAL_PREFIX:
            prefix = _CATEGORICAL_PREFIX[feature] + "="
            one_hot.append(next((i for i, name in enumerate(names) if name.startswith(prefix)), 0))
            types.append("c")
        else:
            one_hot.append(names.index(_NUMERIC_NAME[feature]))
            types.append("q")
    return ZoneCodeLayout(tuple(types), tuple(one_hot), vocabulary.size)


@dataclass(frozen=True)
class ZoneCodeMatrix(_FitRows):
    """The rows an XGBoost fit sees, as XGBoost grows the same trees fastest: one column per feature.

    A categorical feature is one integer code per row: its one-hot column's offset in the feature's
    block (`one_hot_columns[j]` is the block's first column). A category the vocabulary left out
    (too rare for any split: see `training.vocabulary_min_count`) gets a code of its own past the
    kept ones, so, like its absent one-hot column, no split can single it out. With one-vs-rest
    categorical splits, XGBoost then grows the trees it grows on the one-hot matrix (same splits,
    gains and leaves; `training.one_hot_booster` turns them back into one-hot trees).
    A numeric feature is its value (`one_hot_columns[j]` is its one-hot column).
    """

    X: np.ndarray  # (rows, features) float32
    y: np.ndarray | None
    weight: np.ndarray | None
    feature_types: tuple[str, ...]  # "c" categorical, "q" numeric: XGBoost's feature types
    one_hot_columns: tuple[int, ...]
    n_columns: int  # the one-hot matrix's width

    @property
    def layout(self) -> ZoneCodeLayout:
        return ZoneCodeLayout(self.feature_types, self.one_hot_columns, self.n_columns)

    @property
    def max_code(self) -> int:
        codes = [self.X[:, j] for j, kind in enumerate(self.feature_types) if kind == "c"]
        return int(max((c.max() for c in codes if c.size), default=0))


def build_zone_code_matrix(frame: pl.DataFrame, vocabulary: FeatureVocabulary, *, left_out: Mapping[str, np.ndarray] | None = None) -> ZoneCodeMatrix | None:
    """`frame` as a `ZoneCodeMatrix`; None when a feature column holds nulls (then only the one-hot matrix is exact).

    A left-out category's code is its rank among the left-out categories: of this frame's, or, for
    rows fitted in partitions, of `left_out` (`left_out_categories` of the partitions' merged counts),
    so that one category has one code in every partition and two never share one. Categories in
    neither (validation rows) share the code after them.
    """
    needed = [c for f in vocabulary._row_order for c in (_CATEGORICAL_ZONES.get(f) or (_NUMERIC_COLUMN[f],))]
    if any(frame[c].null_count() for c in needed):
        return None
    names = vocabulary.feature_names
    layout = zone_code_layout(vocabulary)
    X = np.empty((frame.height, len(vocabulary._row_order)), dtype=np.float32)
    for j, feature in enumerate(vocabulary._row_order):
        if feature in _CATEGORICAL_PREFIX:
            prefix = _CATEGORICAL_PREFIX[feature] + "="
            kept = sum(name.startswith(prefix) for name in names)
            zones = [frame[c].to_numpy() for c in _CATEGORICAL_ZONES[feature]]
            column = vocabulary.column_of(feature, zones, np.ones(frame.height, dtype=bool))
            code = (column - layout.one_hot_columns[j]).astype(np.float32)
            rows_left_out = column < 0
            if rows_left_out.any():
                key = np.zeros(int(rows_left_out.sum()), dtype=np.int64)
                for z in zones:
                    key = key * _ZONE_RADIX + z[rows_left_out].astype(np.int64)
                code[rows_left_out] = kept + (np.unique(key, return_inverse=True)[1] if left_out is None else _rank_in(left_out[feature], key))
            X[:, j] = code
        else:
            X[:, j] = frame[_NUMERIC_COLUMN[feature]].cast(pl.Float32).to_numpy()
    y, weight = _target_and_weight(frame)
    return ZoneCodeMatrix(X=X, y=y, weight=weight, feature_types=layout.feature_types, one_hot_columns=layout.one_hot_columns, n_columns=layout.n_columns)


def _rank_in(known: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each key's position in `known` (ascending); `known.size` for a key not in it."""
    position = np.searchsorted(known, keys)
    found = position < known.size
    found[found] = known[position[found]] == keys[found]
    return np.where(found, position, known.size)
