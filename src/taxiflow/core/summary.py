"""What a training run did: the facts tracked in MLflow, printed by the CLI and reported."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taxiflow.core.promotion import PromotionDecision


@dataclass(frozen=True)
class MonthFacts:
    month: str
    file: str
    sha256: str
    rows_read: int
    rows_kept: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    parts: tuple[MonthFacts, ...] = ()  # the months of a range (`combine_month_facts`), each as its own facts


FILE_SEPARATOR = "; "


def combine_month_facts(label: str, months: list[MonthFacts]) -> MonthFacts:
    """The facts of a training range (`2023-01..2023-03`) from its months': rows and drops summed, files listed.

    Its sha256 is the sha256 of the months' digests in order: the range's content identity.
    """
    if len(months) == 1:
        return months[0]
    dropped: dict[str, int] = {}
    for month in months:
        for reason, rows in month.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + rows
    return MonthFacts(
        month=label,
        file=FILE_SEPARATOR.join(m.file for m in months),
        sha256=hashlib.sha256("".join(m.sha256 for m in months).encode()).hexdigest(),
        rows_read=sum(m.rows_read for m in months),
        rows_kept=sum(m.rows_kept for m in months),
        dropped=dropped,
        parts=tuple(months),
    )


@dataclass(frozen=True)
class TrainingFacts:
    """Everything known about a fitted, evaluated model before it is logged."""

    taxi: str
    model: str
    features: tuple[str, ...]
    train: MonthFacts
    val: MonthFacts
    n_features: int  # columns of the model's one-hot vocabulary
    rmse: float
    mae: float
    n_features_pruned: int = 0  # training categories left out as too rare (min_count); 0: DictVectorizer's vocabulary
    model_params: dict[str, object] = field(default_factory=dict)  # the estimator's hyperparameters
    options: dict[str, object] = field(default_factory=dict)  # pipeline choices (vocabulary pruning, row collapsing)
    intercept: float | None = None
    best_iteration: int | None = None

    def mlflow_params(self) -> dict[str, str]:
        params: dict[str, object] = {
            "taxi": self.taxi,
            "model": self.model,
            "features": ",".join(self.features),
            "train_month": self.train.month,
            "val_month": self.val.month,
            "train_file": _file_name(self.train.file),
            "val_file": _file_name(self.val.file),
            "train_sha256": self.train.sha256,
            "val_sha256": self.val.sha256,
            "n_features": self.n_features,
            "n_features_pruned": self.n_features_pruned,
        }
        params.update({f"xgb_{k}": v for k, v in self.model_params.items()})
        params.update(self.options)
        return {k: str(v) for k, v in params.items()}

    def mlflow_metrics(self) -> dict[str, float]:
        metrics = {
            "rmse": self.rmse,
            "mae": self.mae,
            "rows_train_read": self.train.rows_read,
            "rows_train": self.train.rows_kept,
            "rows_val_read": self.val.rows_read,
            "rows_val": self.val.rows_kept,
        }
        for split, month in (("train", self.train), ("val", self.val)):
            metrics.update({f"dropped_{split}_{reason}": n for reason, n in month.dropped.items()})
        if self.intercept is not None:
            metrics["intercept"] = self.intercept
        if self.best_iteration is not None:
            metrics["best_iteration"] = self.best_iteration
        return {k: float(v) for k, v in metrics.items()}


def _file_name(file: str) -> str:
    """A file's name (not where it was on this machine); a month from a database as its description says it; a range's files each so."""
    return FILE_SEPARATOR.join(f.rsplit("/", 1)[-1] if f.endswith(".parquet") else f for f in file.split(FILE_SEPARATOR))


@dataclass(frozen=True)
class RegisteredModel:
    run_id: str
    experiment_id: str
    model_name: str
    model_version: str
    model_uri: str


def training_summary(facts: TrainingFacts, registered: RegisteredModel, tracking_uri: str, decision: PromotionDecision | None = None) -> dict[str, object]:
    """The machine-readable summary `taxiflow train --json` prints."""
    summary: dict[str, object] = {
        "rmse": facts.rmse,
        "mae": facts.mae,
        "rows_train": facts.train.rows_kept,
        "rows_val": facts.val.rows_kept,
        "rows_train_read": facts.train.rows_read,
        "rows_val_read": facts.val.rows_read,
        "taxi": facts.taxi,
        "train_month": facts.train.month,
        "val_month": facts.val.month,
        "model": facts.model,
        "features": list(facts.features),
        "n_features": facts.n_features,
        "n_features_pruned": facts.n_features_pruned,
        "dropped_train": facts.train.dropped,
        "dropped_val": facts.val.dropped,
        "tracking_uri": tracking_uri,
        **asdict(registered),
    }
    if facts.intercept is not None:
        summary["intercept"] = facts.intercept
    if facts.best_iteration is not None:
        summary["best_iteration"] = facts.best_iteration
    if decision is not None:
        summary.update(
            gate=decision.outcome,
            promoted=decision.promote,
            # The champion once the run finished, and how the one before it scored on these rows.
            champion_version=registered.model_version if decision.promote else decision.champion_version,
            previous_champion_version=decision.champion_version,
            champion_rmse_on_val=decision.champion_rmse,
            rmse_improvement=decision.improvement,
            decision_reason=decision.reason,
        )
    return summary


def data_quality_rows(facts: TrainingFacts) -> list[dict[str, object]]:
    """One row per (split, reason): how much each month lost and why (a Prefect table artifact)."""
    rows = []
    for split, month in (*(("train", m) for m in facts.train.parts or (facts.train,)), ("validation", facts.val)):
        for reason, n in month.dropped.items():
            rows.append({"split": split, "month": month.month, "reason": reason, "rows": n, "share": f"{n / month.rows_read:.3%}"})
        rows.append({"split": split, "month": month.month, "reason": "kept", "rows": month.rows_kept, "share": f"{month.rows_kept / month.rows_read:.3%}"})
    return rows
