import json

import numpy as np
import scipy.sparse as sp

from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.training import XGBoostParams, fit_linear, fit_xgboost
from taxiflow.io.model_bundle import load_model_bundle, save_model_bundle


def _data():
    X = sp.random(300, 5, density=0.6, random_state=3, format="csr", dtype=np.float32)
    y = np.asarray(X @ np.arange(5.0)).ravel() + 2.0
    vocabulary = FeatureVocabulary(
        features=("pu", "distance"), feature_names=("PULocationID=1", "PULocationID=2", "PULocationID=3", "PULocationID=4", "trip_distance")
    )
    return X, y, vocabulary


def test_models_round_trip_as_plain_files_with_identical_predictions(tmp_path):
    X, y, vocabulary = _data()
    models = [fit_linear(X.astype(np.float64), y), fit_xgboost(X, y, X, y, XGBoostParams(max_depth=3, num_boost_round=5))]
    for model in models:
        X_model = X.astype(model.feature_dtype)
        directory = save_model_bundle(model, vocabulary, tmp_path / model.kind)
        restored, restored_vocabulary = load_model_bundle(directory)
        assert restored.kind == model.kind
        assert (restored_vocabulary.features, restored_vocabulary.feature_names) == (vocabulary.features, vocabulary.feature_names)
        np.testing.assert_array_equal(restored.predict(X_model), model.predict(X_model))
        # Plain files only: nothing a loader would have to unpickle.
        model_file = {"linear": "linear_model.json", "xgboost": "model.ubj"}[model.kind]
        assert sorted(f.name for f in directory.iterdir()) == sorted(["bundle.json", "feature_vocabulary.json", model_file])
        assert json.loads((directory / "bundle.json").read_text()) == {"kind": model.kind, "model_file": model_file}
