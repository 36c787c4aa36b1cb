"""benchmarks/scoring.py's measured code, in-process on a small month: the floor and the job predict the same, the report reads."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from benchmarks.scoring import floor, report, scoring_job
from taxiflow.core.features import build_feature_matrix, fit_vocabulary
from taxiflow.core.preparation import prepare_trips
from taxiflow.core.schema import CANONICAL_FIELDS, TRIP_LAYOUTS
from taxiflow.core.training import XGBoostParams, fit_xgboost
from taxiflow.io.model_bundle import save_model_bundle
from taxiflow.io.trip_tables import read_trip_table


def _prepared(path):
    return prepare_trips(read_trip_table(str(path), TRIP_LAYOUTS["green"], list(CANONICAL_FIELDS)), source=str(path)).frame


def test_the_floor_and_the_scoring_job_agree_on_a_small_month(tlc_dir, tmp_path):
    train, val = _prepared(tlc_dir / "green_tripdata_2023-01.parquet"), _prepared(tlc_dir / "green_tripdata_2023-02.parquet")
    vocabulary = fit_vocabulary(train, ("pu_do", "distance"))
    x_train, x_val = build_feature_matrix(train, vocabulary), build_feature_matrix(val, vocabulary)
    bundle = save_model_bundle(
        fit_xgboost(x_train.X, x_train.y, x_val.X, x_val.y, XGBoostParams(max_depth=6, num_boost_round=3)), vocabulary, tmp_path / "bundle"
    )
    month = tmp_path / "green_tripdata_2023-03.parquet"
    pq.write_table(pq.read_table(tlc_dir / "green_tripdata_2023-03.parquet").slice(0, 20_000), month)

    floor_timer, floor_facts = floor(month, bundle, tmp_path / "floor.npy")
    job_timer, job_facts = scoring_job(month, tlc_dir / "green_tripdata_2023-01.parquet", bundle, tmp_path / "out")

    assert set(floor_timer.seconds) == {"read", "features", "predict"} and set(job_timer.seconds) == {"score", "reference", "drift"}
    assert floor_facts["rows"] == job_facts["rows"] == job_facts["rows_read"] == 20_000
    written = pq.read_table(job_facts["output"])
    np.testing.assert_array_equal(written.column("ride_index").to_numpy(), np.arange(20_000))
    np.testing.assert_array_equal(written.column("prediction").to_numpy(), np.load(tmp_path / "floor.npy").astype(np.float64))
    assert 0 < job_facts["inputs_predicted"] < 20_000 and set(job_facts["drift"]) == {"trip_distance", "PULocationID", "DOLocationID", "prediction"}

    run = {"work_s": 1.0, "wall_s": 2.0, "peak_rss_mb": 300.0}
    month_result = {
        "floor": run | {"stages": floor_timer.seconds},
        "job": run | {"stages": job_timer.seconds, "facts": job_facts},
        "cli": {"wall_s": 5.0, "flow_s": 1.5, "peak_rss_mb": 500.0},
        "figures": {"job_over_floor": 0.5},
        "predictions_identical": True,
    }
    text = report({"rows": 20_000, "months": {"resampled": month_result}})
    assert "| resampled | 1.00 | 1.00 | **0.50x** |" in text and "| yes |" in text
