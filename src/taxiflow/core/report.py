"""The markdown report of a training run (rendered by the Prefect UI as a document)."""

from __future__ import annotations

from taxiflow.core.summary import RegisteredModel, TrainingFacts


def render_training_report(facts: TrainingFacts, registered: RegisteredModel) -> str:
    lost_train = facts.train.rows_read - facts.train.rows_kept
    lost_val = facts.val.rows_read - facts.val.rows_kept
    lines = [
        f"# Trip duration model: {facts.taxi} {facts.train.month} → {facts.val.month}",
        "",
        f"**Validation RMSE: {facts.rmse:.4f} min** (MAE {facts.mae:.4f} min), "
        f"`{registered.model_name}` version **{registered.model_version}**.",
        "",
        "## Data",
        "",
        "| | month | rows read | rows kept (1–60 min) | dropped | sha256 |",
        "|---|---|---:|---:|---:|---|",
        f"| train | {facts.train.month} | {facts.train.rows_read:,} | {facts.train.rows_kept:,} | {lost_train:,} | `{facts.train.sha256[:16]}` |",
        f"| validation | {facts.val.month} | {facts.val.rows_read:,} | {facts.val.rows_kept:,} | {lost_val:,} | `{facts.val.sha256[:16]}` |",
    ]
    for label, month in (("train", facts.train), ("validation", facts.val)):
        if month.dropped:
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in month.dropped.items())
            lines.append(f"\nDropped from {label} {month.month}: {reasons}.")
    lines += [
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| model | {facts.model} |",
        f"| features | {', '.join(facts.features)} ({facts.n_features:,} columns"
        + (f"; {facts.n_features_pruned:,} rarer categories left out" if facts.n_features_pruned else "")
        + ") |",
    ]
    if facts.best_iteration is not None:
        lines.append(f"| best iteration | {facts.best_iteration} |")
    if facts.intercept is not None:
        lines.append(f"| intercept | {facts.intercept:.4f} |")
    lines += [f"| {k} | {v} |" for k, v in {**facts.model_params, **facts.options}.items()]
    lines += [
        "",
        "## Tracking",
        "",
        f"- MLflow run: `{registered.run_id}` (experiment `{registered.experiment_id}`)",
        f"- Registered model: `{registered.model_name}` version {registered.model_version} (`{registered.model_uri}`)",
    ]
    return "\n".join(lines) + "\n"
