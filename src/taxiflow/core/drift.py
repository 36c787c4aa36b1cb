"""Data drift between a scored month and the month its model was trained on: Evidently's default tests.

Evidently (the course's monitoring tool) was the first choice, but it does not import alongside this
project's pinned pandas 3.1 (`ImportError: cannot import name 'infer_dtype_from_object'`). Its
default column tests are a few scipy calls, so they are implemented here, as Evidently computes them
(`evidently.calculations.stattests`: `registry._get_default_stattest` chooses, per column):

- reference of more than 1,000 rows:
  - numerical column with more than 5 distinct values (reference and current together): the
    Wasserstein distance (`scipy.stats.wasserstein_distance`) divided by the reference's standard
    deviation (at least 0.001); drift when >= 0.1;
  - categorical column (or numerical with at most 5 values): the Jensen-Shannon distance, base 2
    (`scipy.spatial.distance.jensenshannon`), of each value's share of the rows; drift when >= 0.1;
- reference of 1,000 rows or fewer (a distance means little on so few rows, a test's p-value does):
  - numerical, more than 5 values: two-sample Kolmogorov-Smirnov (`scipy.stats.ks_2samp`), drift
    when p <= 0.05;
  - categorical (or numerical with at most 5 values): chi-square of the current counts against the
    reference's shares (`scipy.stats.chisquare`) when there are more than 2 values, else a
    two-proportion z-test; drift when p < 0.05;
- the dataset drifts when the share of drifted columns is at least `drift_share` (0.5, as
  Evidently's `DatasetDriftMetric`).

Missing values are left out, as Evidently drops them before testing. A column is given as
`ValueCounts` (its distinct values and how often each occurs): every test is exact on it (a sample
is its values repeated by their counts), and a month streamed batch by batch needs memory for its
distinct values, not for its rows. Pure numpy/scipy, vectorized.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats
from scipy.spatial import distance

ColumnKind = Literal["numerical", "categorical"]
Method = Literal["wasserstein", "jensenshannon", "ks", "chisquare", "z"]

# Evidently's defaults.
SMALL_REFERENCE_ROWS = 1000  # at most this many reference rows: statistical tests instead of distances
FEW_VALUES = 5  # a numerical column with at most this many distinct values is tested as categorical
DISTANCE_THRESHOLD = 0.1  # Wasserstein (normed) and Jensen-Shannon: drift when the distance is at least this
P_VALUE_THRESHOLD = 0.05  # KS, chi-square, z: drift when the p-value is below this (KS: at most)
WASSERSTEIN_MIN_NORM = 0.001
DATASET_DRIFT_SHARE = 0.5

_DENSE_RANGE = 1 << 20  # integer samples spanning fewer values are counted with bincount
_LAZY_MERGE_ENTRIES = 1 << 20

METHOD_NAMES: dict[str, str] = {
    "wasserstein": "Wasserstein distance (normed)",
    "jensenshannon": "Jensen-Shannon distance",
    "ks": "K-S p-value",
    "chisquare": "chi-square p-value",
    "z": "Z-test p-value",
}


@dataclass(frozen=True)
class ValueCounts:
    """A sample as its sorted distinct values and their counts (missing values left out)."""

    values: np.ndarray
    counts: np.ndarray  # int64, > 0

    @classmethod
    def of(cls, sample: np.ndarray) -> ValueCounts:
        array = np.asarray(sample)
        if array.dtype.kind == "f":
            array = array[np.isfinite(array)]  # Evidently drops NaN and +-inf before testing
        if array.dtype.kind in "iu" and array.size:
            low, high = int(array.min()), int(array.max())
            if high - low < _DENSE_RANGE:  # zone IDs: one counting pass instead of a sort
                dense = np.bincount((array - low).astype(np.intp))
                present = np.flatnonzero(dense)
                return cls((present + low).astype(array.dtype), dense[present].astype(np.int64))
        values, counts = np.unique(array, return_counts=True)
        return cls(values, counts.astype(np.int64))

    @classmethod
    def combined(cls, parts: list[ValueCounts]) -> ValueCounts:
        """The counts of all `parts` together (one sort for all of them)."""
        parts = [p for p in parts if p.values.size]
        if len(parts) <= 1:
            return parts[0] if parts else cls.empty()
        values, inverse = np.unique(np.concatenate([p.values for p in parts]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([p.counts for p in parts]), minlength=values.size)
        return cls(values, counts.astype(np.int64))  # float64 sums of integers: exact below 2**53

    @classmethod
    def empty(cls) -> ValueCounts:
        return cls(np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: ValueCounts) -> ValueCounts:
        return ValueCounts.combined([self, other])

    def sample(self) -> np.ndarray:
        """The sample itself (sorted): each value repeated by its count."""
        return np.repeat(self.values, self.counts)

    def mean(self) -> float:
        return float(np.average(self.values, weights=self.counts)) if self.values.size else math.nan

    def std(self) -> float:
        """Population standard deviation (numpy's default, ddof=0), as Evidently norms by `np.std`."""
        if not self.values.size:
            return math.nan
        mean = np.average(self.values, weights=self.counts)
        return float(np.sqrt(np.average((self.values - mean) ** 2, weights=self.counts)))


def _aligned(reference: ValueCounts, current: ValueCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values seen in either sample, and each sample's count of each (0 where absent)."""
    keys = np.union1d(reference.values, current.values)
    ref = np.zeros(keys.size, dtype=np.int64)
    cur = np.zeros(keys.size, dtype=np.int64)
    ref[np.searchsorted(keys, reference.values)] = reference.counts
    cur[np.searchsorted(keys, current.values)] = current.counts
    return keys, ref, cur


def wasserstein_normed(reference: ValueCounts, current: ValueCounts) -> float:
    norm = max(reference.std(), WASSERSTEIN_MIN_NORM)
    return float(stats.wasserstein_distance(reference.values, current.values, reference.counts, current.counts)) / norm


def jensenshannon_shares(reference: ValueCounts, current: ValueCounts) -> float:
    _, ref, cur = _aligned(reference, current)
    return float(distance.jensenshannon(ref / reference.total, cur / current.total, base=2))


def ks_p_value(reference: ValueCounts, current: ValueCounts) -> float:
    return float(stats.ks_2samp(reference.sample(), current.sample()).pvalue)


def chisquare_p_value(reference: ValueCounts, current: ValueCounts) -> float:
    _, ref, cur = _aligned(reference, current)
    expected = ref * (current.total / reference.total)
    with np.errstate(divide="ignore", invalid="ignore"):  # a value absent from the reference: p = 0, as in Evidently
        return float(stats.chisquare(cur, expected).pvalue)


def z_p_value(reference: ValueCounts, current: ValueCounts) -> float:
    """Two-proportion z-test on the share of the first value (a column with one or two values)."""
    keys, ref, cur = _aligned(reference, current)
    if keys.size == 1:
        return 1.0
    n1, n2 = reference.total, current.total
    p1, p2 = ref[0] / n1, cur[0] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * (1 - stats.norm.cdf(abs(z))))


def default_method(kind: ColumnKind, reference: ValueCounts, current: ValueCounts) -> Method:
    """The test Evidently picks by default for a column of this kind and these samples."""
    n_values = np.union1d(reference.values, current.values).size
    few = kind == "categorical" or n_values <= FEW_VALUES
    if reference.total <= SMALL_REFERENCE_ROWS:
        if not few:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    return "jensenshannon" if few else "wasserstein"


_SCORES = {"wasserstein": wasserstein_normed, "jensenshannon": jensenshannon_shares, "ks": ks_p_value, "chisquare": chisquare_p_value, "z": z_p_value}


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: ColumnKind
    method: Method
    score: float  # a distance (wasserstein, jensenshannon) or a p-value (ks, chisquare, z)
    threshold: float
    drifted: bool
    reference_rows: int
    current_rows: int
    reference_mean: float | None = None  # numerical columns: what moved, for a person reading the report
    current_mean: float | None = None

    @property
    def is_distance(self) -> bool:
        return self.method in ("wasserstein", "jensenshannon")


def column_drift(column: str, kind: ColumnKind, reference: ValueCounts, current: ValueCounts) -> ColumnDrift:
    """One column's drift with Evidently's default test for it."""
    if not reference.total or not current.total:
        raise ValueError(f"{column}: drift needs values in both samples (reference {reference.total}, current {current.total})")
    method = default_method(kind, reference, current)
    score = _SCORES[method](reference, current)
    if method in ("wasserstein", "jensenshannon"):
        threshold, drifted = DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD
    else:
        threshold = P_VALUE_THRESHOLD
        drifted = score <= threshold if method == "ks" else score < threshold
    means = (reference.mean(), current.mean()) if kind == "numerical" else (None, None)
    return ColumnDrift(column, kind, method, score, threshold, bool(drifted), reference.total, current.total, *means)


# The columns a scoring run checks: the model's inputs (as the TLC names them) and its output.
DRIFT_COLUMNS: dict[str, ColumnKind] = {
    "trip_distance": "numerical",
    "PULocationID": "categorical",
    "DOLocationID": "categorical",
    "prediction": "numerical",
}


@dataclass
class MonthProfile:
    """What drift needs of a month, accumulated batch by batch: each column's value counts.

    Batches' counts are combined lazily, once they hold more entries than twice what was combined
    so far (and at the end): memory stays a small multiple of the distinct values.
    """

    _parts: dict[str, list[ValueCounts]] = field(default_factory=dict)

    def add(self, name: str, sample: np.ndarray) -> None:
        parts = self._parts.setdefault(name, [])
        parts.append(ValueCounts.of(sample))
        if len(parts) > 2 and sum(p.values.size for p in parts[1:]) > max(2 * parts[0].values.size, _LAZY_MERGE_ENTRIES):
            parts[:] = [ValueCounts.combined(parts)]

    def get(self, name: str) -> ValueCounts:
        parts = self._parts.get(name)
        if not parts:
            return ValueCounts.empty()
        if len(parts) > 1:
            parts[:] = [ValueCounts.combined(parts)]
        return parts[0]

    @property
    def columns(self) -> dict[str, ValueCounts]:
        return {name: self.get(name) for name in self._parts}


@dataclass(frozen=True)
class DriftReport:
    reference: str  # what the columns were compared with ("green 2023-01, v3's training month")
    current: str
    columns: tuple[ColumnDrift, ...]
    drift_share: float  # the dataset drifts when at least this share of columns drifted
    rmse: float | None = None  # the current month's, on rides with actual durations (1..60 min)
    reference_rmse: float | None = None  # the model's validation RMSE, as registered
    skipped: tuple[str, ...] = ()  # columns with no values in one sample (e.g. no distance for fhv)

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns if c.drifted)

    @property
    def share_drifted(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    @property
    def dataset_drift(self) -> bool:
        return bool(self.columns) and self.share_drifted >= self.drift_share

    def summary(self) -> dict:
        """JSON-ready: what `taxiflow score --json` prints and MLflow keeps."""
        return {
            "reference": self.reference,
            "current": self.current,
            "dataset_drift": self.dataset_drift,
            "share_drifted": self.share_drifted,
            "drift_share": self.drift_share,
            "drifted_columns": list(self.drifted_columns),
            "rmse": self.rmse,
            "reference_rmse": self.reference_rmse,
            "columns": {
                c.column: {
                    "kind": c.kind,
                    "method": c.method,
                    "score": c.score,
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                    "reference_rows": c.reference_rows,
                    "current_rows": c.current_rows,
                    "reference_mean": c.reference_mean,
                    "current_mean": c.current_mean,
                }
                for c in self.columns
            },
            "skipped_columns": list(self.skipped),
        }

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: each column's score and verdict, the share, the verdict, RMSEs."""
        metrics: dict[str, float] = {"drift_share_drifted": self.share_drifted, "dataset_drift": float(self.dataset_drift), "drift_share": self.drift_share}
        for c in self.columns:
            metrics[f"drift_score_{c.column}"] = c.score
            metrics[f"drifted_{c.column}"] = float(c.drifted)
        if self.rmse is not None:
            metrics["rmse"] = self.rmse
        if self.reference_rmse is not None:
            metrics["reference_rmse"] = self.reference_rmse
        return metrics


def compare_profiles(
    reference: MonthProfile,
    current: MonthProfile,
    *,
    reference_label: str,
    current_label: str,
    drift_share: float = DATASET_DRIFT_SHARE,
    kinds: Mapping[str, ColumnKind] | None = None,
    rmse: float | None = None,
    reference_rmse: float | None = None,
) -> DriftReport:
    """Each column of `kinds` (default: `DRIFT_COLUMNS`) tested reference vs current; a column empty on either side is skipped."""
    if not 0 <= drift_share <= 1:
        raise ValueError(f"drift_share must be in 0..1, got {drift_share}")
    columns, skipped = [], []
    for name, kind in (kinds or DRIFT_COLUMNS).items():
        ref, cur = reference.get(name), current.get(name)
        if not ref.total or not cur.total:
            skipped.append(name)
            continue
        columns.append(column_drift(name, kind, ref, cur))
    return DriftReport(reference_label, current_label, tuple(columns), drift_share, rmse, reference_rmse, tuple(skipped))


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render_drift_report(report: DriftReport, *, heading: str, facts: Mapping[str, str] | None = None) -> str:
    """Markdown for a person (Prefect artifact `drift-report`, MLflow `drift/drift_report.md`)."""
    verdict = (
        f"**Dataset drift**: {len(report.drifted_columns)} of {len(report.columns)} columns drifted "
        f"({report.share_drifted:.0%} >= {report.drift_share:.0%}): {', '.join(report.drifted_columns)}."
        if report.dataset_drift
        else f"**No dataset drift**: {len(report.drifted_columns)} of {len(report.columns)} columns drifted "
        f"({report.share_drifted:.0%}, alert at {report.drift_share:.0%})" + (f": {', '.join(report.drifted_columns)}." if report.drifted_columns else ".")
    )
    lines = [f"# {heading}", "", verdict, "", f"Current: {report.current}. Reference: {report.reference}.", ""]
    if facts:
        lines += [f"- {label}: {value}" for label, value in facts.items()] + [""]
    lines += [
        "| column | kind | test | score | drift when | drifted | reference mean | current mean |",
        "|---|---|---|---:|---|---|---:|---:|",
    ]
    for c in report.columns:
        rule = f"{'>=' if c.is_distance else ('<=' if c.method == 'ks' else '<')} {c.threshold:g}"
        lines.append(
            f"| {c.column} | {c.kind} | {METHOD_NAMES[c.method]} | {c.score:.4f} | {rule} | {'**yes**' if c.drifted else 'no'} "
            f"| {_number(c.reference_mean, 3)} | {_number(c.current_mean, 3)} |"
        )
    if report.skipped:
        lines += ["", f"Not tested (no values on one side): {', '.join(report.skipped)}."]
    lines += [""]
    if report.rmse is not None:
        versus = (
            f" against {_number(report.reference_rmse)} at validation ({report.rmse - report.reference_rmse:+.4f} min)"
            if report.reference_rmse is not None
            else ""
        )
        lines.append(f"RMSE on rides with an actual duration (1-60 min): **{_number(report.rmse)} min**{versus}.")
    else:
        lines.append("RMSE: no actual durations in this month.")
    lines += [
        "",
        "Tests: Evidently's defaults (Wasserstein distance normed by the reference's standard deviation for numerical columns, "
        "Jensen-Shannon distance for categorical ones, both drifting at 0.1; KS / chi-square p-values below 0.05 for references "
        "of 1,000 rows or fewer), computed with scipy.",
    ]
    return "\n".join(lines) + "\n"
