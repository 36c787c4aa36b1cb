"""The model a service answers with, and how it follows the registry's alias.

A `ModelHolder` keeps one `LoadedModel`. Requests read `holder.current` once, so a swap (one
reference assignment, done by the poll thread or `/admin/reload`) is atomic: a request is answered
wholly by the old version or wholly by the new one, and never waits for a load.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taxiflow.core.features import FeatureVocabulary, one_hot_rows
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, PICKUP_ZONE
from taxiflow.core.training import DurationModel, XGBoostModel
from taxiflow.io.model_bundle import load_model_bundle
from taxiflow.io.model_store import ModelRef, ModelStore
from taxiflow.serving.rides import Rides

_log = logging.getLogger("taxiflow.serving")
_INPLACE_FROM_ROWS = 256  # measured crossover on the course's model (100 trees, depth up to 30)

# Rides every new version must answer with finite minutes before it is swapped in.
SMOKE_RIDES = Rides(
    pickup=np.array([74, 132, 1, 265], dtype=np.int32),
    dropoff=np.array([75, 265, 1, 1], dtype=np.int32),
    distance=np.array([2.5, 17.3, 0.0, 0.01]),
    ride_ids=None,
    single=False,
)


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    model: DurationModel
    vocabulary: FeatureVocabulary
    loaded_at: dt.datetime

    def predict(self, rides: Rides) -> np.ndarray:
        """Minutes per ride: training's feature code, then the booster alone (no MLflow in the way)."""
        columns = {PICKUP_ZONE: rides.pickup, DROPOFF_ZONE: rides.dropoff, DISTANCE: rides.distance}
        X = one_hot_rows(columns, self.vocabulary, self.model.feature_dtype, n=len(rides))
        if isinstance(self.model, XGBoostModel):
            import xgboost as xgb

            # One thread (set at load): a request's few rows cost more in thread start-up than they
            # gain (0.3 ms vs 2.3 ms for one ride); concurrent requests use the cores instead.
            # inplace_predict costs ~1 ms more per call, but ~20% less per row: it wins on batches.
            # Both give the same predictions (tests compare each path with the registered pyfunc).
            if X.shape[0] >= _INPLACE_FROM_ROWS:
                return self.model.booster.inplace_predict(X)
            return self.model.booster.predict(xgb.DMatrix(X, nthread=1))
        return self.model.predict(X)


def load_version(store: ModelStore, ref: ModelRef) -> LoadedModel:
    """Fetch a version's files, load them, and check they predict: raises on any failure."""
    with tempfile.TemporaryDirectory(prefix="taxiflow-serve-") as tmp:
        bundle = store.download_bundle(ref.version, Path(tmp) / "bundle")
        model, vocabulary = load_model_bundle(bundle)
    if isinstance(model, XGBoostModel):
        model.booster.set_param({"nthread": 1})
    loaded = LoadedModel(ref=ref, model=model, vocabulary=vocabulary, loaded_at=dt.datetime.now(dt.UTC))
    smoke = np.asarray(loaded.predict(SMOKE_RIDES), dtype=np.float64)
    if smoke.shape != (len(SMOKE_RIDES),) or not np.isfinite(smoke).all():
        raise ValueError(f"smoke prediction failed: got {smoke.tolist()} for {len(SMOKE_RIDES)} rides")
    return loaded


class ModelHolder:
    """The current model, the alias it follows, and why the last candidate was refused (if it was)."""

    def __init__(self, store: ModelStore, alias: str, poll_s: float) -> None:
        self.store = store
        self.alias = alias
        self.poll_s = poll_s
        self.current: LoadedModel | None = None
        self.refused: dict[str, str] | None = None  # {"version": ..., "reason": ...}
        self.last_check_error: str | None = None
        self.alias_version: str | None = None  # what the alias named at the last check (None: no such alias)
        self.last_checked: dt.datetime | None = None
        self._lock = threading.Lock()  # one load at a time (poll thread vs admin reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self, *, force: bool = False) -> str:
        """Follow the alias once: load and swap in a new version if it names one. Returns what happened."""
        with self._lock:
            try:
                ref = self.store.version_for_alias(self.alias)
                self.last_check_error = None
            except Exception as exc:  # noqa: BLE001 - the registry being down must not stop serving
                self.last_check_error = str(exc)
                _log.warning("checking alias %r failed: %s", self.alias, exc)
                return "registry unreachable"
            finally:
                self.last_checked = dt.datetime.now(dt.UTC)
            self.alias_version = ref.version if ref is not None else None
            if ref is None:
                # The last good model keeps serving: an alias removed by mistake must not take predictions down.
                return f"no version has alias {self.alias!r}"
            if self.current is not None and self.current.ref.version == ref.version:
                self.refused = None  # the alias came back from a refused version: nothing is refused now
                return f"v{ref.version} already serving"
            if not force and self.refused is not None and self.refused["version"] == ref.version:
                return f"v{ref.version} was refused: {self.refused['reason']}"
            started = time.perf_counter()
            try:
                loaded = load_version(self.store, ref)
            except Exception as exc:  # noqa: BLE001 - any failure refuses the version; the old one keeps serving
                reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
                self.refused = {"version": ref.version, "reason": reason}
                _log.error("v%s refused, %s: %s", ref.version, "keeping v" + self.current.ref.version if self.current else "no model loaded", reason)
                return f"v{ref.version} refused: {reason}"
            previous = self.current
            self.current = loaded  # the swap
            self.refused = None
            _log.info(
                "serving v%s (alias %r)%s, loaded in %.2f s",
                ref.version,
                self.alias,
                f", was v{previous.ref.version}" if previous else "",
                time.perf_counter() - started,
            )
            return f"v{ref.version} loaded"

    def start_polling(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="taxiflow-model-poll", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        self.refresh()
        while not self._stop.wait(self.poll_s if self.current is not None else min(self.poll_s, 2.0)):
            self.refresh()

    def describe(self) -> dict:
        """What `/model` shows."""
        current = self.current
        model: dict | None = None
        if current is not None:
            tags = current.ref.tags
            rmse = tags.get("rmse")
            model = {
                "version": current.ref.version,
                "run_id": current.ref.run_id,
                "kind": current.model.kind,
                "rmse": float(rmse) if rmse and _is_number(rmse) else None,
                "taxi": tags.get("taxi"),
                "train_month": tags.get("train_month"),
                "val_month": tags.get("val_month"),
                "loaded_at": current.loaded_at.isoformat(timespec="seconds"),
            }
        return {
            "model_name": getattr(self.store, "model_name", None),
            "alias": self.alias,
            "alias_version": self.alias_version,
            "tracking_uri": self.store.shown_uri,
            "model": model,
            "refused": self.refused,
            "last_checked": self.last_checked.isoformat(timespec="seconds") if self.last_checked else None,
            "registry_error": self.last_check_error,
            "poll_s": self.poll_s,
        }


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
