"""Human commands on the registry: list versions, promote one by hand, roll the champion back.

Every alias move runs under the same lock as the train flow's gate, after the load-and-predict
check that the gate applies, and records who, when and why on the version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import polars as pl

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.features import required_columns
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, PICKUP_ZONE
from taxiflow.core.training import predict_trips
from taxiflow.io.registry import CHAMPION, PREVIOUS_TAG, ModelLoadError, ModelRegistry, current_user, promotion_lock
from taxiflow.io.tracking import PENDING, STATE_TAG, TrackingStore
from taxiflow.settings import TaxiflowSettings


@dataclass(frozen=True)
class ChampionChange:
    text: str  # what the command prints
    champion: str
    previous: str | None
    moved: bool


# A few real zone pairs (JFK -> Midtown, a short Manhattan hop, an unseen pair) and distances.
_SMOKE_TRIPS = {PICKUP_ZONE: [132, 237, 1], DROPOFF_ZONE: [230, 236, 265], DISTANCE: [17.5, 1.1, 0.0]}


def _registry(settings: TaxiflowSettings, tracking_uri: str, model_name: str) -> ModelRegistry:
    store = TrackingStore(tracking_uri, settings.experiment_name, retry_budget_s=30.0)
    return ModelRegistry(store, model_name)


def _parse_version(text: str, model_name: str) -> str:
    """`3`, `name/3` or `models:/name/3`; a version of another model is refused."""
    spec = text.removeprefix("models:/")
    name, sep, version = spec.rpartition("/")
    if sep and name != model_name:
        raise InvalidArgumentError(f"{text!r} is a version of model {name!r}, not of {model_name!r} (set --model-name)")
    return version


def check_loads_and_predicts(registry: ModelRegistry, version: str) -> None:
    """What serving would do with the version: load its files and predict finite minutes."""
    model, vocabulary = registry.load_version(version)
    trips = pl.DataFrame(_SMOKE_TRIPS, schema={PICKUP_ZONE: pl.Int32, DROPOFF_ZONE: pl.Int32, DISTANCE: pl.Float64})
    predictions = predict_trips(model, trips.select(required_columns(vocabulary.features)), vocabulary)
    if predictions.shape != (trips.height,) or not np.isfinite(predictions).all():
        raise ModelLoadError(f"{registry.model_name} v{version}: predicts {predictions.tolist()} for a smoke input")


class VersionRow(TypedDict):
    """One line of `taxiflow models ls` (its --json form is a list of these)."""

    version: str
    aliases: list[str]
    rmse: float | None
    taxi: str | None
    train_month: str | None
    val_month: str | None
    gate: str | None
    gate_reason: str | None
    state: str | None
    previous_champion: str | None
    run_id: str | None
    created: str


def list_versions(settings: TaxiflowSettings, tracking_uri: str, model_name: str) -> list[VersionRow]:
    registry = _registry(settings, tracking_uri, model_name)
    if not registry.client.search_registered_models(f"name = '{model_name}'", max_results=1):
        raise InvalidArgumentError(f"no registered model named {model_name!r} in {registry.store.shown_uri}")
    rows: list[VersionRow] = []
    for v in registry.versions():
        rmse = v.tags.get("rmse")
        rows.append(
            {
                "version": v.version,
                "aliases": list(v.aliases),
                "rmse": float(rmse) if rmse else None,
                "taxi": v.tags.get("taxi"),
                "train_month": v.tags.get("train_month"),
                "val_month": v.tags.get("val_month"),
                "gate": v.tags.get("taxiflow.gate"),
                "gate_reason": v.tags.get("taxiflow.gate_reason"),
                "state": v.tags.get(STATE_TAG),
                "previous_champion": v.tags.get(PREVIOUS_TAG) or None,
                "run_id": v.run_id,
                "created": dt.datetime.fromtimestamp(v.created_ms / 1000, dt.UTC).isoformat(timespec="seconds"),
            }
        )
    return rows


def promote_version(settings: TaxiflowSettings, tracking_uri: str, model_name: str, version_text: str, *, reason: str) -> ChampionChange:
    if not reason.strip():
        raise InvalidArgumentError("--reason must say why (it is recorded on the version)")
    registry = _registry(settings, tracking_uri, model_name)
    version = _parse_version(version_text, model_name)
    target = registry.get_version(version)
    if target.tags.get(STATE_TAG) == PENDING:
        raise InvalidArgumentError(f"{model_name} v{version} is pending: its run never committed it (it failed or was killed)")
    with promotion_lock(settings.state_dir.resolve(), tracking_uri, model_name):
        current = registry.version_by_alias(CHAMPION)
        if current is not None and str(current.version) == version:
            return ChampionChange(f"{model_name} v{version} is already the champion", version, version, moved=False)
        check_loads_and_predicts(registry, version)
        previous = str(current.version) if current is not None else None
        registry.set_tags(version, {"taxiflow.gate": "forced"})
        registry.promote(version, previous=previous, reason=f"manual promotion: {reason}")
    return ChampionChange(f"{model_name} champion: {'v' + previous if previous else 'none'} -> v{version} ({reason})", version, previous, moved=True)


def rollback_champion(settings: TaxiflowSettings, tracking_uri: str, model_name: str, *, reason: str | None = None) -> ChampionChange:
    registry = _registry(settings, tracking_uri, model_name)
    with promotion_lock(settings.state_dir.resolve(), tracking_uri, model_name):
        current = registry.version_by_alias(CHAMPION)
        if current is None:
            if not registry.client.search_registered_models(f"name = '{model_name}'", max_results=1):
                raise InvalidArgumentError(f"no registered model named {model_name!r} in {registry.store.shown_uri}")
            raise InvalidArgumentError(f"{model_name} has no champion to roll back")
        previous = current.tags.get(PREVIOUS_TAG)
        if not previous:
            raise InvalidArgumentError(f"{model_name} v{current.version} has no previous champion to roll back to")
        registry.get_version(previous)
        check_loads_and_predicts(registry, previous)
        # The previous champion keeps its own record (and so the rest of the history); the demoted one says why.
        registry.set_tags(
            str(current.version),
            {
                "taxiflow.rolled_back_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "taxiflow.rolled_back_by": current_user(),
                "taxiflow.rolled_back_reason": reason or "",
            },
        )
        registry.client.set_registered_model_alias(model_name, CHAMPION, previous)
    text = f"{model_name} champion: v{current.version} -> v{previous} (rollback{': ' + reason if reason else ''})"
    return ChampionChange(text, previous, str(current.version), moved=True)


__all__ = ["check_loads_and_predicts", "list_versions", "promote_version", "rollback_champion"]
