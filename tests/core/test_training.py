import numpy as np
import pytest
import scipy.sparse as sp

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.metrics import regression_metrics
from taxiflow.core.training import LinearModel, XGBoostParams, fit_linear


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
    params = XGBoostParams().with_overrides(max_depth=6, learning_rate=None)
    assert params.max_depth == 6 and params.learning_rate == XGBoostParams().learning_rate


@pytest.mark.parametrize("override", [{"max_depth": 0}, {"learning_rate": -1.0}, {"num_boost_round": 0}, {"gamma": 1.0}])
def test_bad_overrides_are_refused(override):
    with pytest.raises(InvalidArgumentError):
        XGBoostParams().with_overrides(**override)


def test_linear_model_recovers_known_coefficients_and_round_trips():
    X = sp.random(500, 4, density=0.5, random_state=1, format="csr")
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 4.0
    model = fit_linear(X, y)
    assert model.intercept == pytest.approx(4.0)
    np.testing.assert_allclose(model.coef, [1.0, -2.0, 0.5, 3.0], atol=1e-8)
    restored = LinearModel.from_json(model.to_json())
    np.testing.assert_allclose(restored.predict(X), y)


def test_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]))
    assert m.rmse == pytest.approx(np.sqrt(5 / 3))
    assert m.mae == pytest.approx(1.0)
