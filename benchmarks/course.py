"""The baseline: the MLOps Zoomcamp course's pipeline, as the course writes it.

pandas reads the whole file, duration per row through `.apply`, zones as strings, `to_dict` records
into a DictVectorizer, `xgb.train` on the sparse matrix, then MLflow logging and registration.
Deliberately not optimised: it is the yardstick.
"""

from __future__ import annotations

import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction import DictVectorizer
from sklearn.metrics import root_mean_squared_error

from benchmarks.measure import StageTimer

if TYPE_CHECKING:
    import xgboost as xgb

# The course imports xgboost and mlflow at the top; here they load only for the stages that use
# them, so the read -> features measurement carries neither in its RSS. Full runs import them
# before timing starts (see `import_training_libraries`).

# The course's hyperopt result, and its boosting schedule.
COURSE_PARAMS: dict[str, object] = {
    "learning_rate": 0.09585355369315604,
    "max_depth": 30,
    "min_child_weight": 1.060597050922164,
    "objective": "reg:squarederror",
    "reg_alpha": 0.018060244040060163,
    "reg_lambda": 0.011658731377413597,
    "seed": 42,
}
NUM_BOOST_ROUND = 100
EARLY_STOPPING_ROUNDS = 20
MODEL_NAME = "nyc-taxi-duration-course"


@dataclass(frozen=True)
class CourseFeatures:
    X_train: sp.csr_matrix
    X_val: sp.csr_matrix
    y_train: np.ndarray
    y_val: np.ndarray
    dv: DictVectorizer


def read_dataframe(filename: Path) -> pd.DataFrame:
    return pd.read_parquet(filename)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    df["lpep_dropoff_datetime"] = pd.to_datetime(df["lpep_dropoff_datetime"])
    df["lpep_pickup_datetime"] = pd.to_datetime(df["lpep_pickup_datetime"])
    df["duration"] = df["lpep_dropoff_datetime"] - df["lpep_pickup_datetime"]
    df["duration"] = df["duration"].apply(lambda td: td.total_seconds() / 60)
    df = df[(df["duration"] >= 1) & (df["duration"] <= 60)]
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    return df


def add_features(df_train: pd.DataFrame, df_val: pd.DataFrame) -> CourseFeatures:
    df_train["PU_DO"] = df_train["PULocationID"] + "_" + df_train["DOLocationID"]
    df_val["PU_DO"] = df_val["PULocationID"] + "_" + df_val["DOLocationID"]
    categorical = ["PU_DO"]
    numerical = ["trip_distance"]
    dv = DictVectorizer()
    X_train = dv.fit_transform(df_train[categorical + numerical].to_dict(orient="records"))
    X_val = dv.transform(df_val[categorical + numerical].to_dict(orient="records"))
    return CourseFeatures(X_train, X_val, df_train["duration"].to_numpy(), df_val["duration"].to_numpy(), dv)


def import_training_libraries() -> None:
    import mlflow.xgboost  # noqa: F401
    import xgboost  # noqa: F401


def train_booster(features: CourseFeatures, num_boost_round: int = NUM_BOOST_ROUND) -> tuple[xgb.Booster, xgb.DMatrix]:
    import xgboost as xgb

    train = xgb.DMatrix(features.X_train, label=features.y_train)
    valid = xgb.DMatrix(features.X_val, label=features.y_val)
    booster = xgb.train(
        params=COURSE_PARAMS,
        dtrain=train,
        num_boost_round=num_boost_round,
        evals=[(valid, "validation")],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
    )
    return booster, valid


def log_and_register(booster: xgb.Booster, dv: DictVectorizer, rmse: float, tracking_dir: Path) -> str:
    """Params, metric, the pickled DictVectorizer and the booster, then a registered version."""
    import mlflow
    import mlflow.xgboost

    mlflow.set_tracking_uri(f"sqlite:///{tracking_dir / 'mlflow.db'}")
    if mlflow.get_experiment_by_name("nyc-taxi-experiment") is None:
        mlflow.create_experiment("nyc-taxi-experiment", artifact_location=(tracking_dir / "mlartifacts").as_uri())
    mlflow.set_experiment("nyc-taxi-experiment")
    with mlflow.start_run():
        mlflow.log_params(COURSE_PARAMS)
        mlflow.log_metric("rmse", rmse)
        with tempfile.TemporaryDirectory() as tmp:
            preprocessor = Path(tmp) / "preprocessor.b"
            preprocessor.write_bytes(pickle.dumps(dv))
            mlflow.log_artifact(str(preprocessor), artifact_path="preprocessor")
        info = mlflow.xgboost.log_model(booster, name="models_mlflow")
    return str(mlflow.register_model(info.model_uri, MODEL_NAME).version)


def run(train_path: Path, val_path: Path, *, tracking_dir: Path | None, num_boost_round: int = NUM_BOOST_ROUND) -> tuple[StageTimer, dict[str, object]]:
    """The course pipeline, stage by stage; stops after the feature matrix when `tracking_dir` is None."""
    timer = StageTimer()
    with timer.stage("read"):
        df_train, df_val = read_dataframe(train_path), read_dataframe(val_path)
    with timer.stage("prepare"):
        df_train, df_val = prepare(df_train), prepare(df_val)
    with timer.stage("features"):
        features = add_features(df_train, df_val)
    facts: dict[str, object] = {"rows_train": features.X_train.shape[0], "rows_val": features.X_val.shape[0], "n_features": features.X_train.shape[1]}
    if tracking_dir is None:
        return timer, facts
    with timer.stage("train"):
        booster, valid = train_booster(features, num_boost_round)
    with timer.stage("evaluate"):
        rmse = float(root_mean_squared_error(features.y_val, booster.predict(valid)))
    with timer.stage("log"):
        version = log_and_register(booster, features.dv, rmse, tracking_dir)
    return timer, facts | {"rmse": rmse, "model_version": version}
