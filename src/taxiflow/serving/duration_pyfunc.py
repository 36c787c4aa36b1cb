"""MLflow "models from code" entry point: raw trip columns in, predicted minutes out.

Logged as code plus plain artifact files, so loading a model never unpickles anything.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.models
import pandas as pd
import polars as pl
from mlflow.pyfunc import PythonModel

from taxiflow.core.features import build_feature_matrix
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, PICKUP_ZONE
from taxiflow.io.model_bundle import load_model_bundle

# Accept the TLC's column names (as the course's served model did) or taxiflow's canonical ones.
INPUT_ALIASES = {"PULocationID": PICKUP_ZONE, "DOLocationID": DROPOFF_ZONE, "trip_distance": DISTANCE}


def trips_from_records(model_input: pd.DataFrame) -> pl.DataFrame:
    frame = pl.from_pandas(pd.DataFrame(model_input).rename(columns=INPUT_ALIASES))
    casts = {PICKUP_ZONE: pl.Int32, DROPOFF_ZONE: pl.Int32, DISTANCE: pl.Float64}
    return frame.with_columns(pl.col(c).cast(t) for c, t in casts.items() if c in frame.columns)


# The signature is declared when logging; MLflow's nag about predict() type hints is noise here.
warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")


class TripDurationModel(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.vocabulary = load_model_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input, params=None):
        features = build_feature_matrix(trips_from_records(model_input), self.vocabulary, self.model.feature_dtype)
        return self.model.predict(features.X)


mlflow.models.set_model(TripDurationModel())
