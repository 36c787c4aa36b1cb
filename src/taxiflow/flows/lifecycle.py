"""The model lifecycle's tasks: gate a registered version against the champion, then commit it.

Wiring only: the decision is `core.promotion.decide_promotion`, alias moves are `io.registry`.
The train flow runs `evaluate_gate` -> reports -> `commit_with_decision` under `promotion_lock`,
so two runs finishing together are compared one after the other, each against the champion
the other may just have installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from taxiflow.core.features import FeatureVocabulary, required_columns
from taxiflow.core.metrics import regression_metrics
from taxiflow.core.preparation import PreparedTrips
from taxiflow.core.promotion import ChampionScore, PromotionDecision, decide_promotion
from taxiflow.core.report import render_promotion_decision
from taxiflow.core.schema import DURATION
from taxiflow.core.summary import RegisteredModel, TrainingFacts
from taxiflow.core.training import DurationModel, predict_trips
from taxiflow.io.registry import CHAMPION, GATE_TAG, ModelLoadError, ModelRegistry
from taxiflow.io.tracking import TrackingStore

DECISION_KEY = "promotion-decision"
_SMOKE_ROWS = 1000


@dataclass(frozen=True)
class GateResult:
    decision: PromotionDecision
    note: str | None  # when the champion differs in kind from the challenger
    champion_predictions: np.ndarray | None  # on the validation rows, for the side-by-side plot


def verify_registered_model(registry: ModelRegistry, version: str, fitted: DurationModel, vocabulary: FeatureVocabulary, val: PreparedTrips) -> None:
    """The version's files, loaded as serving loads them, predict exactly what the fitted model does."""
    model, loaded_vocabulary = registry.load_version(version)
    if loaded_vocabulary != vocabulary:
        raise ModelLoadError(f"{registry.model_name} v{version}: the registered vocabulary differs from the fitted one")
    sample = val.frame.head(_SMOKE_ROWS)
    expected, got = predict_trips(fitted, sample, vocabulary), predict_trips(model, sample, loaded_vocabulary)
    if not np.array_equal(expected, got):
        raise ModelLoadError(f"{registry.model_name} v{version}: the registered model predicts differently from the fitted one")


def _champion_note(champion_tags: dict[str, str], champion_features: tuple[str, ...], facts: TrainingFacts, version: str) -> str | None:
    differences = []
    if champion_tags.get("taxi") and champion_tags["taxi"] != facts.taxi:
        differences.append(f"{champion_tags['taxi']} trips instead of {facts.taxi}")
    if champion_features != facts.features:
        differences.append(f"features {','.join(champion_features)} instead of {','.join(facts.features)}")
    if not differences:
        return None
    return f"Champion v{version} was trained on {' and '.join(differences)}; it was re-scored on this run's {facts.val.month} validation rows all the same."


@task(cache_policy=NO_CACHE)
def evaluate_gate(
    registry: ModelRegistry,
    registered: RegisteredModel,
    fitted: DurationModel,
    vocabulary: FeatureVocabulary,
    val: PreparedTrips,
    facts: TrainingFacts,
    policy: str,
    margin: float,
    reason: str | None,
) -> GateResult:
    logger = get_run_logger()
    verify_registered_model(registry, registered.model_version, fitted, vocabulary, val)
    champion = registry.version_by_alias(CHAMPION)
    score, note, predictions = None, None, None
    if champion is not None:
        version = str(champion.version)
        try:
            model, champion_vocabulary = registry.load_version(version)
            missing = [c for c in required_columns(champion_vocabulary.features) if c not in val.frame.columns]
            if missing:
                raise ModelLoadError(f"it needs {', '.join(missing)}, which this run's trips don't have (features {','.join(facts.features)})")
            predictions = predict_trips(model, val.frame, champion_vocabulary)
            score = ChampionScore(version, regression_metrics(val.frame[DURATION].to_numpy(), predictions).rmse)
            note = _champion_note(dict(champion.tags), champion_vocabulary.features, facts, version)
        except ModelLoadError as exc:
            logger.warning("champion v%s could not be scored: %s", version, exc)
            score = ChampionScore(version, None, error=str(exc))
    decision = decide_promotion(facts.rmse, score, margin=margin, policy=policy, forced_reason=reason)
    logger.info("promotion gate: %s (%s)", decision.outcome, decision.reason)
    return GateResult(decision, note, predictions)


@task(cache_policy=NO_CACHE)
def publish_promotion_decision(gate: GateResult, registered: RegisteredModel, val_month: str) -> str:
    create_markdown_artifact(
        key=DECISION_KEY,
        markdown=render_promotion_decision(gate.decision, registered, val_month=val_month, note=gate.note),
        description=f"{registered.model_name} v{registered.model_version}: {gate.decision.outcome}",
    )
    return DECISION_KEY


def gate_tags(decision: PromotionDecision, val_month: str) -> dict[str, str]:
    return {
        GATE_TAG: decision.outcome,
        "taxiflow.gate_reason": decision.reason[:4000],
        "taxiflow.challenger_rmse": f"{decision.challenger_rmse:.6f}",
        "taxiflow.champion_rmse_on_val": "" if decision.champion_rmse is None else f"{decision.champion_rmse:.6f}",
        "taxiflow.champion_version_before": decision.champion_version or "",
        "taxiflow.promotion_margin": f"{decision.margin:g}",
        "taxiflow.val_month": val_month,
    }


@task(cache_policy=NO_CACHE)
def commit_with_decision(
    store: TrackingStore, registry: ModelRegistry, registered: RegisteredModel, gate: GateResult, val_month: str, extra_tags: dict[str, str] | None = None
) -> None:
    """Record the gate, commit the version, move `champion` if promoted: the run's commit point.

    What follows the commit point (the `challenger` alias, the run's FINISHED status) is retried
    and, if it still fails, logged: it never fails a run whose model is committed.
    """
    decision, version = gate.decision, registered.model_version
    registry.set_tags(version, gate_tags(decision, val_month) | (extra_tags or {}))
    metrics: dict[str, float] = {}
    if decision.champion_rmse is not None and decision.improvement is not None:  # both or neither: no champion, no comparison
        metrics = {"champion_rmse_on_val": decision.champion_rmse, "rmse_improvement": decision.improvement}
    store.log_metrics(registered.run_id, metrics)
    store.commit(registered)
    if decision.promote:
        registry.promote(version, previous=decision.champion_version, reason=decision.reason)
    logger = get_run_logger()
    try:
        registry.mark_challenger(version)
        store.finish(registered.run_id)
    except Exception as exc:  # noqa: BLE001 - after the commit point: report, don't fail
        logger.error("v%s is committed but its bookkeeping failed (challenger alias / run status): %s", version, exc)
    logger.info(
        "%s v%s committed: %s%s",
        registered.model_name,
        version,
        decision.outcome,
        " (now champion)" if decision.promote else f" (champion stays {('v' + decision.champion_version) if decision.champion_version else 'unset'})",
    )
