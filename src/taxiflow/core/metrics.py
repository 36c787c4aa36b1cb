"""Validation metrics.

The formulas of scikit-learn's `root_mean_squared_error` and `mean_absolute_error` (float64 errors,
averaged with numpy), without importing scikit-learn: that import alone costs ~1.1 s of every run.
`tests/core/test_metrics.py` checks they agree with scikit-learn's on real predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegressionMetrics:
    rmse: float
    mae: float


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> RegressionMetrics:
    if np.ndim(y_true) != 1 or np.shape(y_true) != np.shape(y_pred) or np.size(y_true) == 0:
        raise ValueError(f"expected two non-empty 1-d arrays of equal length, got shapes {np.shape(y_true)} and {np.shape(y_pred)}")
    errors = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
    return RegressionMetrics(rmse=float(np.sqrt(np.average(errors**2))), mae=float(np.average(np.abs(errors))))


@dataclass
class ErrorTotals:
    """Squared and absolute errors summed batch by batch: RMSE and MAE of a month streamed in parts."""

    squared: float = 0.0
    absolute: float = 0.0
    count: int = 0

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        errors = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
        self.squared += float(np.sum(errors**2))
        self.absolute += float(np.sum(np.abs(errors)))
        self.count += errors.size

    def metrics(self) -> RegressionMetrics | None:
        """None when no row had an actual value."""
        if not self.count:
            return None
        return RegressionMetrics(rmse=float(np.sqrt(self.squared / self.count)), mae=self.absolute / self.count)
