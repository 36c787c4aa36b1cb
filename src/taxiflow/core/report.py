"""The markdown report of a training run (rendered by the Prefect UI as a document)."""

from __future__ import annotations

from taxiflow.core.promotion import PromotionDecision
from taxiflow.core.summary import RegisteredModel, TrainingFacts


def render_promotion_decision(decision: PromotionDecision, registered: RegisteredModel, *, val_month: str, note: str | None = None) -> str:
    """The gate's decision as a short document (Prefect artifact `promotion-decision`)."""
    verdict = {
        "promoted": f"**v{registered.model_version} is the new champion.**",
        "forced": f"**v{registered.model_version} was made champion by hand (forced).**",
        "kept": f"**Champion unchanged**: v{registered.model_version} stays a challenger.",
        "not-evaluated": f"**Champion unchanged**: it could not be compared; v{registered.model_version} stays a challenger.",
    }[decision.outcome]
    champion = f"v{decision.champion_version}" if decision.champion_version else "none"
    lines = [
        f"# Promotion gate: {registered.model_name} v{registered.model_version}",
        "",
        verdict,
        "",
        f"Reason: {decision.reason}",
        "",
        f"| | version | RMSE on {val_month} (min) |",
        "|---|---|---:|",
        f"| challenger | v{registered.model_version} | {decision.challenger_rmse:.4f} |",
        f"| champion before | {champion} | {'' if decision.champion_rmse is None else f'{decision.champion_rmse:.4f}'} |",
        "",
        f"Gate: `{decision.outcome}`, margin {decision.margin:g} min"
        + ("" if decision.improvement is None else f", improvement {decision.improvement:+.4f} min")
        + ".",
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def render_training_report(
    facts: TrainingFacts,
    registered: RegisteredModel,
    decision: PromotionDecision | None = None,
    *,
    links: dict[str, str] | None = None,
    note: str | None = None,
    plots: list[str] | None = None,
) -> str:
    lost_train = facts.train.rows_read - facts.train.rows_kept
    lost_val = facts.val.rows_read - facts.val.rows_kept
    lines = [
        f"# Trip duration model: {facts.taxi} {facts.train.month} → {facts.val.month}",
        "",
        f"**Validation RMSE: {facts.rmse:.4f} min** (MAE {facts.mae:.4f} min), `{registered.model_name}` version **{registered.model_version}**.",
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
    if decision is not None:
        champion = f"v{decision.champion_version}" if decision.champion_version else "none"
        lines += [
            "",
            "## Promotion",
            "",
            f"Gate **{decision.outcome}**: {decision.reason}.",
            "",
            f"| | version | RMSE on {facts.val.month} |",
            "|---|---|---:|",
            f"| this model | v{registered.model_version} | {decision.challenger_rmse:.4f} |",
            f"| champion before | {champion} | {'' if decision.champion_rmse is None else f'{decision.champion_rmse:.4f}'} |",
        ]
        if note:
            lines += ["", note]
    lines += [
        "",
        "## Tracking",
        "",
        f"- MLflow run: `{registered.run_id}` (experiment `{registered.experiment_id}`)",
        f"- Registered model: `{registered.model_name}` version {registered.model_version} (`{registered.model_uri}`)",
    ]
    for label, url in (links or {}).items():
        lines.append(f"- [{label}]({url})")
    if plots:
        lines.append(f"- Plots in the MLflow run's artifacts, `plots/`: {', '.join(f'`{p}`' for p in plots)}")
    return "\n".join(lines) + "\n"
