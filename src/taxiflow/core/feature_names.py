"""Feature names, and the canonical trip columns each needs: cheap to import (no polars, no numpy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, PICKUP_ZONE

FeatureName = Literal["pu_do", "pu", "do", "distance"]
FEATURE_NAMES: tuple[str, ...] = ("pu_do", "pu", "do", "distance")
DEFAULT_FEATURES: tuple[str, ...] = ("pu_do", "distance")

# DictVectorizer column prefixes, as the course names its dict keys.
_CATEGORICAL_PREFIX = {"pu_do": "PU_DO", "pu": "PULocationID", "do": "DOLocationID"}
_NUMERIC_NAME = {"distance": "trip_distance"}
_CATEGORICAL_ZONES = {"pu_do": (PICKUP_ZONE, DROPOFF_ZONE), "pu": (PICKUP_ZONE,), "do": (DROPOFF_ZONE,)}
_NUMERIC_COLUMN = {"distance": DISTANCE}


def parse_features(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"pu_do,distance"` or a list -> validated, de-duplicated feature names in the given order."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise InvalidArgumentError(f"features: expected a comma list of {', '.join(FEATURE_NAMES)}, got nothing")
    unknown = [s for s in items if s not in FEATURE_NAMES]
    if unknown:
        raise InvalidArgumentError(f"features: unknown feature(s) {', '.join(unknown)}; expected a comma list of {', '.join(FEATURE_NAMES)}")
    return tuple(dict.fromkeys(items))


def required_columns(features: tuple[str, ...]) -> list[str]:
    """Canonical trip columns a feature set needs (besides the timestamps used for the target)."""
    cols: list[str] = []
    for name in features:
        cols.extend(_CATEGORICAL_ZONES.get(name, ()))
        if name in _NUMERIC_COLUMN:
            cols.append(_NUMERIC_COLUMN[name])
    return list(dict.fromkeys(cols))
