"""Each evaluation plot is a real PNG made from a real month's numbers, quickly, without pyplot."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.evaluation import compare_by_distance_band, rmse_by_borough, rmse_by_distance_band
from taxiflow.core.preparation import prepare_trips
from taxiflow.core.schema import CANONICAL_FIELDS, DISTANCE, DURATION, PICKUP_ZONE, TRIP_LAYOUTS
from taxiflow.io import plots
from taxiflow.io.trip_tables import read_trip_table
from taxiflow.io.zone_lookup import read_zone_boroughs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _prepared(tlc_dir: Path, month: str) -> pl.DataFrame:
    path = tlc_dir / f"green_tripdata_{month}.parquet"
    return prepare_trips(read_trip_table(str(path), TRIP_LAYOUTS["green"], list(CANONICAL_FIELDS)), source=str(path)).frame


@pytest.fixture(scope="module")
def month(tlc_dir):
    """2023-02 trips with two model-free predictions from 2023-01: mean duration per pickup zone, and per zone with distance."""
    train, val = _prepared(tlc_dir, "2023-01"), _prepared(tlc_dir, "2023-02")
    per_zone = train.group_by(PICKUP_ZONE).agg(pl.col(DURATION).mean().alias("pred"))
    pred = val.join(per_zone, on=PICKUP_ZONE, how="left", maintain_order="left")["pred"].fill_null(train[DURATION].mean()).to_numpy()
    # Crude speed model: 2.5 min per mile plus 4 min; a different champion to compare against.
    speed = 4.0 + 2.5 * val[DISTANCE].to_numpy()
    return {
        "distance": val[DISTANCE].to_numpy(),
        "zone": val[PICKUP_ZONE].to_numpy(),
        "y": val[DURATION].to_numpy(),
        "pred": pred,
        "speed": speed,
        "boroughs": read_zone_boroughs(tlc_dir / "taxi_zone_lookup.csv"),
    }


def _assert_png(path: Path, written: Path) -> np.ndarray:
    assert written == path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[:2] == (500, 800) and image.shape[2] in (3, 4)  # 8 x 5 in at 100 dpi
    colours = np.unique(image.reshape(-1, image.shape[2]), axis=0)
    assert len(colours) > 10, f"{path.name} looks blank ({len(colours)} distinct colours)"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".part")] == [], "no temporary file may remain"
    return image


def test_predicted_vs_actual(month, tmp_path):
    path = tmp_path / "predicted_vs_actual.png"
    _assert_png(path, plots.plot_predicted_vs_actual(month["y"], month["pred"], path))


def test_residuals(month, tmp_path):
    path = tmp_path / "residuals.png"
    _assert_png(path, plots.plot_residuals(month["y"], month["pred"].astype(np.float32), path))


def test_rmse_by_distance_band(month, tmp_path):
    path = tmp_path / "rmse_by_distance_band.png"
    rows = rmse_by_distance_band(month["distance"], month["y"], month["pred"])
    _assert_png(path, plots.plot_rmse_by_distance_band(rows, str(path)))


def test_rmse_by_borough(month, tmp_path):
    path = tmp_path / "rmse_by_borough.png"
    rows = rmse_by_borough(month["zone"], month["y"], month["pred"], month["boroughs"])
    _assert_png(path, plots.plot_rmse_by_borough(rows, path))


def test_champion_vs_challenger(month, tmp_path):
    path = tmp_path / "champion_vs_challenger.png"
    comparison = compare_by_distance_band(month["distance"], month["y"], {"champion v1": month["speed"], "challenger v2": month["pred"]})
    _assert_png(path, plots.plot_model_comparison(comparison, path))


def test_an_existing_file_is_replaced(month, tmp_path):
    path = tmp_path / "residuals.png"
    path.write_bytes(b"old")
    _assert_png(path, plots.plot_residuals(month["y"], month["pred"], path))


def test_a_million_trips_plot_in_about_a_second_each(month, tmp_path):
    # ~1 M rows: the real month repeated, with noise so the hexbin and histogram see spread-out values.
    reps = -(-1_000_000 // month["y"].size)
    y = np.tile(month["y"], reps)
    pred = np.tile(month["pred"], reps) + np.random.default_rng(7).normal(0.0, 2.0, y.size)
    rows = rmse_by_distance_band(np.tile(month["distance"], reps), y, pred)
    timings = {}
    for name, draw in {
        "predicted_vs_actual": lambda p: plots.plot_predicted_vs_actual(y, pred, p),
        "residuals": lambda p: plots.plot_residuals(y, pred, p),
        "rmse_by_distance_band": lambda p: plots.plot_rmse_by_distance_band(rows, p),
    }.items():
        start = time.perf_counter()
        written = draw(tmp_path / f"{name}.png")
        timings[name] = time.perf_counter() - start
        _assert_png(tmp_path / f"{name}.png", written)
    # ~0.6 s on a 2-core box; the bound leaves room for a loaded CI machine, and still catches per-row work.
    assert max(timings.values()) < 4.0, timings


def test_bad_input_is_refused_before_anything_is_written(month, tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(InvalidArgumentError, match=r"y_true, y_pred: expected two 1-D arrays of the same length, got shapes \(62574,\) and \(10,\)"):
        plots.plot_predicted_vs_actual(month["y"], month["pred"][:10], path)
    with pytest.raises(InvalidArgumentError, match=r"y_true, y_pred: no trip with both values finite \(of 2\)"):
        plots.plot_residuals(np.array([1.0, 2.0]), np.array([np.nan, np.inf]), path)
    with pytest.raises(InvalidArgumentError, match=r"rmse_by_borough rows: no rows to plot"):
        plots.plot_rmse_by_borough([], path)
    assert list(tmp_path.iterdir()) == []


def test_plots_do_not_touch_pyplot():
    # pyplot holds global state (backend, figure registry); the module must work without it.
    code = "import sys, taxiflow.io.plots; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
