"""Evaluation plots as PNG files, for MLflow artifacts and people.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas attached, never through pyplot:
no global backend switch, no figure registry to leak from, safe in worker threads. Each function
writes one PNG (to a temporary file renamed into place, so a reader never sees half a file) and
returns its path. Raw arrays go straight to hexbin/histogram code: ~1 M trips take well under a
second, so nothing is subsampled.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.evaluation import BandComparison

_SIZE_IN = (8.0, 5.0)
_DPI = 100
_BAR_COLOR = "#4C72B0"
_MODEL_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def _figure() -> Figure:
    figure = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def _save(figure: Figure, path: Path | str) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            figure.savefig(out, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if truth.ndim != 1 or truth.shape != pred.shape:
        raise InvalidArgumentError(f"y_true, y_pred: expected two 1-D arrays of the same length, got shapes {truth.shape} and {pred.shape}")
    finite = np.isfinite(truth) & np.isfinite(pred)
    if not finite.any():
        raise InvalidArgumentError(f"y_true, y_pred: no trip with both values finite (of {truth.size:,}); nothing to plot")
    if finite.all():
        return truth, pred
    return truth[finite], pred[finite]


def plot_predicted_vs_actual(y_true, y_pred, path: Path | str, *, title: str = "Predicted vs actual duration") -> Path:
    """Hexbin density of predicted against actual minutes (log colour scale), with the y = x line.

    The axes span the actual durations and the central 99.8% of predictions, so a few wild
    predictions don't shrink the cloud to a corner; the title says how many trips fall outside.
    """
    truth, pred = _pair(y_true, y_pred)
    pred_lo, pred_hi = np.percentile(pred, [0.1, 99.9])
    lo = min(0.0, float(truth.min()), float(pred_lo))
    hi = max(float(truth.max()), float(pred_hi))
    if hi <= lo:
        hi = lo + 1.0
    outside = int(np.count_nonzero((pred < lo) | (pred > hi)))
    figure = _figure()
    ax = figure.add_subplot()
    cells = ax.hexbin(truth, pred, gridsize=60, bins="log", mincnt=1, extent=(lo, hi, lo, hi), cmap="viridis")
    ax.plot([lo, hi], [lo, hi], color="#d62728", linewidth=1.2, label="y = x (perfect)")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="actual duration (min)", ylabel="predicted duration (min)", aspect="equal")
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    hidden = f", {outside:,} predicted outside the axes" if outside else ""
    ax.set_title(f"{title}\n{truth.size:,} trips, RMSE {rmse:.3f} min{hidden}")
    ax.legend(loc="upper left")
    figure.colorbar(cells, ax=ax, label="trips per cell")
    return _save(figure, path)


def plot_residuals(y_true, y_pred, path: Path | str, *, title: str = "Residuals (predicted - actual)") -> Path:
    """Histogram of residuals in minutes; mean and standard deviation in the title.

    The x range is the central 99.8% of residuals so a few wild errors don't squeeze the plot
    flat; the title's statistics use every trip.
    """
    truth, pred = _pair(y_true, y_pred)
    residual = pred - truth
    lo, hi = np.percentile(residual, [0.1, 99.9])
    if hi <= lo:  # all residuals (nearly) equal: give the single bar some width
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(residual, bins=100, range=(lo, hi))
    figure = _figure()
    ax = figure.add_subplot()
    ax.stairs(counts, edges, fill=True, color=_BAR_COLOR)
    ax.axvline(0.0, color="#d62728", linewidth=1.0)
    ax.set(xlabel="residual (min); central 99.8% of trips shown", ylabel="trips")
    ax.set_title(f"{title}\nmean {residual.mean():+.3f} min, std {residual.std():.3f} min, {residual.size:,} trips")
    return _save(figure, path)


def _bars(rows: Sequence[dict], key: str, what: str, path: Path | str, title: str, xlabel: str) -> Path:
    if not rows:
        raise InvalidArgumentError(f"{what}: no rows to plot; expected at least one group with trips")
    labels = [str(r[key]) for r in rows]
    rmse = [float(r["rmse"]) for r in rows]
    figure = _figure()
    ax = figure.add_subplot()
    bars = ax.bar(labels, rmse, color=_BAR_COLOR)
    ax.bar_label(bars, labels=[f"{int(r['trips']):,} trips" for r in rows], padding=2, fontsize=8)
    ax.set(xlabel=xlabel, ylabel="RMSE (min)", title=title)
    ax.margins(y=0.12)  # room for the trip-count labels above the tallest bar
    if len(labels) > 7:  # borough names are long; seven distance bands fit flat
        ax.tick_params(axis="x", labelrotation=30)
    return _save(figure, path)


def plot_rmse_by_distance_band(rows: Sequence[dict], path: Path | str, *, title: str = "RMSE by trip distance") -> Path:
    """Bars of `rmse_by_distance_band` rows, each annotated with its trip count."""
    return _bars(rows, "band", "rmse_by_distance_band rows", path, title, "trip distance")


def plot_rmse_by_borough(rows: Sequence[dict], path: Path | str, *, title: str = "RMSE by pickup borough") -> Path:
    """Bars of `rmse_by_borough` rows (in their order: most trips first), each annotated with its trip count."""
    return _bars(rows, "borough", "rmse_by_borough rows", path, title, "pickup borough")


def plot_model_comparison(comparison: BandComparison, path: Path | str, *, title: str = "Champion vs challenger, same trips") -> Path:
    """Each model's RMSE per distance band side by side; the legend gives each label (e.g. with its version) and overall RMSE."""
    if not comparison.bands or not comparison.rmse:
        raise InvalidArgumentError("comparison: no bands or no models to plot")
    x = np.arange(len(comparison.bands))
    width = 0.8 / len(comparison.rmse)
    figure = _figure()
    ax = figure.add_subplot()
    for i, (label, values) in enumerate(comparison.rmse.items()):
        offset = (i - (len(comparison.rmse) - 1) / 2) * width
        ax.bar(x + offset, values, width, color=_MODEL_COLORS[i % len(_MODEL_COLORS)], label=f"{label} (RMSE {comparison.overall_rmse[label]:.3f})")
    ax.set_xticks(x, [f"{band}\n{n:,} trips" for band, n in zip(comparison.bands, comparison.trips, strict=True)], fontsize=8)
    ax.set(xlabel="trip distance", ylabel="RMSE (min)", title=title)
    ax.legend()
    return _save(figure, path)


def plot_rmse_over_months(points: Sequence[tuple[str, float, bool]], path: Path | str, *, title: str = "Validation RMSE over months") -> Path:
    """(validation month, RMSE, promoted) per pair, in month order: a line, promoted pairs starred."""
    if not points:
        raise InvalidArgumentError("rmse over months: no pairs to plot; expected at least one with an RMSE")
    labels = [p[0] for p in points]
    rmse = [p[1] for p in points]
    figure = _figure()
    ax = figure.add_subplot()
    ax.plot(labels, rmse, marker="o", color=_BAR_COLOR, label="validation RMSE")
    promoted = [(label, value) for label, value, up in points if up]
    if promoted:
        ax.scatter([p[0] for p in promoted], [p[1] for p in promoted], marker="*", s=160, color="#d62728", zorder=3, label="became champion")
    ax.set(xlabel="validation month", ylabel="RMSE (min)", title=title)
    ax.legend()
    if len(labels) > 7:
        ax.tick_params(axis="x", labelrotation=30)
    return _save(figure, path)
