"""The course notebook's linear regression, written as the course writes it: the independent reference.

pandas reads the file, duration from `total_seconds() / 60`, trips of 1..60 minutes, zones as
strings, `to_dict(orient="records")` into a DictVectorizer, scikit-learn's LinearRegression.
Slow on purpose (per-row dicts): it is the yardstick, not taxiflow's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.metrics import root_mean_squared_error

# taxiflow's feature names -> the course's dict keys.
COURSE_KEYS = {"pu_do": "PU_DO", "pu": "PULocationID", "do": "DOLocationID", "distance": "trip_distance"}


@dataclass(frozen=True)
class CourseLinearResult:
    rmse: float
    intercept: float
    n_features: int


def _read_dataframe(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    df["duration"] = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    df = df[(df.duration >= 1) & (df.duration <= 60)].copy()
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df


def course_linear_regression(train_file: Path, val_file: Path, features: list[str]) -> CourseLinearResult:
    df_train, df_val = _read_dataframe(train_file), _read_dataframe(val_file)
    keys = [COURSE_KEYS[f] for f in features]
    dv = DictVectorizer()
    X_train = dv.fit_transform(df_train[keys].to_dict(orient="records"))
    X_val = dv.transform(df_val[keys].to_dict(orient="records"))
    lr = LinearRegression().fit(X_train, df_train["duration"].values)
    rmse = root_mean_squared_error(df_val["duration"].values, lr.predict(X_val))
    return CourseLinearResult(rmse=float(rmse), intercept=float(lr.intercept_), n_features=len(dv.feature_names_))
