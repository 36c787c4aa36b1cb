"""The `train-monthly` flow: the scheduled retrain (deployment `taxi-monthly`).

It derives its months from the run's scheduled date (or `run_month`), then runs `train` as a
subflow, so every scheduled run shows the same task graph and report as a manual one.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from taxiflow.core.months import Month, monthly_training_months
from taxiflow.core.request import MonthText, SourceChoice
from taxiflow.flows.train import train


@flow(name="train-monthly")
def train_monthly(
    taxi: Literal["green", "yellow", "fhv", "fhvhv"] = "green",
    run_month: MonthText | None = None,
    source: SourceChoice = "auto",
    model: Literal["xgboost", "linear"] = "xgboost",
    data_dir: str | None = None,
    min_count: Annotated[int, Field(ge=1)] = 1,
    promote: Literal["auto", "never", "force"] = "auto",
    promotion_margin: Annotated[float, Field(ge=0, le=60)] = 0.0,
) -> dict:
    """Train on the month before last and validate on last month, relative to `run_month` or the scheduled date."""
    if run_month:
        reference = Month.parse(run_month, argument="run_month")
    else:
        scheduled = flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)
        reference = Month(scheduled.year, scheduled.month)
    train_month, val_month = monthly_training_months(reference)
    get_run_logger().info("monthly retrain for %s: train %s, validate %s", reference, train_month, val_month)
    return train(
        taxi=taxi,
        train_month=str(train_month),
        val_month=str(val_month),
        source=source,
        model=model,
        data_dir=data_dir,
        min_count=min_count,
        promote=promote,
        promotion_margin=promotion_margin,
    )
