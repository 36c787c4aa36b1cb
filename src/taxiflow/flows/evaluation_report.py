"""The report a person reads: plots of the validation month in MLflow, RMSE by borough in Prefect.

Best-effort by design: a plot or a zone lookup that can't be made is a warning in the run's log,
never a failed training (the model and its metrics don't depend on them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from taxiflow.core.evaluation import compare_by_distance_band, rmse_by_borough, rmse_by_distance_band
from taxiflow.core.preparation import PreparedTrips
from taxiflow.core.schema import DISTANCE, DURATION, PICKUP_ZONE
from taxiflow.core.summary import RegisteredModel
from taxiflow.flows.lifecycle import GateResult
from taxiflow.io import plots
from taxiflow.io.sources import HttpSource
from taxiflow.io.tracking import TrackingStore
from taxiflow.io.zone_lookup import ZoneLookup, get_zone_lookup

BOROUGH_KEY = "rmse-by-borough"
PLOTS_DIR = "plots"


@task(cache_policy=NO_CACHE)
def get_zone_boroughs(data_dir: str | None, source: HttpSource | None, cache_root: str) -> ZoneLookup | None:
    """The TLC's zone -> borough table, through the same data dir / download / cache path as the months."""
    try:
        return get_zone_lookup(data_dir=Path(data_dir) if data_dir else None, source=source, cache_root=Path(cache_root))
    except Exception as exc:  # noqa: BLE001 - the report goes without boroughs
        get_run_logger().warning("no RMSE by borough: taxi_zone_lookup.csv unavailable (%s)", exc)
        return None


@task(cache_policy=NO_CACHE)
def publish_evaluation_report(
    store: TrackingStore,
    registered: RegisteredModel,
    y_pred: np.ndarray,
    val: PreparedTrips,
    gate: GateResult,
    zones: ZoneLookup | None,
) -> list[str]:
    """PNG plots as MLflow artifacts under `plots/`, and the `rmse-by-borough` table in Prefect; returns the plot names."""
    logger = get_run_logger()
    y_true = val.frame[DURATION].to_numpy()
    label = f"v{registered.model_version}"
    made: list[str] = []
    with tempfile.TemporaryDirectory(prefix="taxiflow-plots-") as tmp:
        out = Path(tmp)
        jobs = [
            ("predicted_vs_actual.png", lambda p: plots.plot_predicted_vs_actual(y_true, y_pred, p, title=f"{label}: predicted vs actual minutes")),
            ("residuals.png", lambda p: plots.plot_residuals(y_true, y_pred, p, title=f"{label}: residuals (predicted - actual)")),
        ]
        if DISTANCE in val.frame.columns:
            distance = val.frame[DISTANCE].to_numpy()
            jobs.append(
                (
                    "rmse_by_distance.png",
                    lambda p: plots.plot_rmse_by_distance_band(rmse_by_distance_band(distance, y_true, y_pred), p, title=f"{label}: RMSE by trip distance"),
                )
            )
            if gate.champion_predictions is not None:
                comparison = compare_by_distance_band(
                    distance, y_true, {f"champion v{gate.decision.champion_version}": gate.champion_predictions, f"challenger {label}": y_pred}
                )
                jobs.append(
                    ("champion_vs_challenger.png", lambda p: plots.plot_model_comparison(comparison, p, title="Champion vs challenger on the same trips"))
                )
        if zones is not None:
            rows = rmse_by_borough(val.frame[PICKUP_ZONE].to_numpy(), y_true, y_pred, zones.boroughs)
            jobs.append(("rmse_by_borough.png", lambda p: plots.plot_rmse_by_borough(rows, p, title=f"{label}: RMSE by pickup borough")))
            try:
                create_table_artifact(
                    key=BOROUGH_KEY,
                    table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                    description=f"{registered.model_name} {label}: validation RMSE by pickup borough",
                )
            except Exception as exc:  # noqa: BLE001
                logger.warning("could not publish %s: %s", BOROUGH_KEY, exc)
        for name, make in jobs:
            try:
                store.log_artifact_file(registered.run_id, make(out / name), PLOTS_DIR)
                made.append(name)
            except Exception as exc:  # noqa: BLE001
                logger.warning("plot %s not made: %s", name, exc)
    logger.info("plots logged to MLflow run %s: %s", registered.run_id, ", ".join(made) or "none")
    return made
