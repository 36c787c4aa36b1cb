"""taxiflow's metrics are scikit-learn's (computed without importing it on every run)."""

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, root_mean_squared_error

from taxiflow.core.metrics import regression_metrics
from taxiflow.core.schema import DURATION


def test_equal_to_scikit_learn_on_a_real_month_with_float32_predictions(green_prepared):
    actual = green_prepared("2023-02").frame[DURATION].to_numpy()
    # float32 predictions, as the booster gives: a fixed, non-trivial error per trip.
    predicted = (actual * 0.9 + np.sin(np.arange(actual.size)) * 3).astype(np.float32)
    metrics = regression_metrics(actual, predicted)
    assert metrics.rmse == pytest.approx(float(root_mean_squared_error(actual, predicted)), rel=1e-13)
    assert metrics.mae == pytest.approx(float(mean_absolute_error(actual, predicted)), rel=1e-13)
    assert metrics.rmse > 1.0  # the comparison above is between real errors, not zeros


def test_hand_computed_values():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]))
    assert m.rmse == pytest.approx(np.sqrt(5 / 3), rel=1e-15)
    assert m.mae == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize(("y_true", "y_pred"), [([], []), ([1.0, 2.0], [1.0]), ([[1.0]], [[1.0]])])
def test_refuses_empty_mismatched_or_2d_input(y_true, y_pred):
    with pytest.raises(ValueError, match="expected two non-empty 1-d arrays"):
        regression_metrics(np.array(y_true), np.array(y_pred))
