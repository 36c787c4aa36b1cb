"""Progress bars appear on a terminal only: CI and logs get nothing."""

import numpy as np
import scipy.sparse as sp

from taxiflow.core.training import XGBoostParams, fit_xgboost
from taxiflow.io.progress import xgboost_fit_progress


def test_no_bar_when_stderr_is_not_a_terminal():
    assert xgboost_fit_progress(100) == []  # pytest captures stderr: not a terminal


def test_the_bar_follows_the_boosting_rounds_and_leaves_the_model_unchanged():
    rng = np.random.default_rng(3)
    X = sp.csr_matrix(rng.random((200, 4)).astype(np.float32))
    y = rng.random(200) * 30
    params = XGBoostParams(max_depth=3, num_boost_round=7, early_stopping_rounds=0)
    (bar,) = xgboost_fit_progress(params.num_boost_round, enabled=True)
    with_bar = fit_xgboost(X, y, X, y, params, callbacks=[bar])
    without = fit_xgboost(X, y, X, y, params)
    assert bar.progress.tasks[0].completed == 7 and bar.progress.tasks[0].total == 7
    np.testing.assert_array_equal(with_bar.predict(X), without.predict(X))
