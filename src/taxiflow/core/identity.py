"""Identities of inputs: what a cached result is keyed on, so that it is reused exactly when its inputs are the same.

Keys are digests of small descriptions (file digests, trip type, options, code version), never of
data frames: computing a key costs microseconds, whatever the month's size.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import taxiflow

_CORE_DIR = Path(__file__).parent
# What decides a month's prepared trips: the schema, the row contracts and the preparation itself.
PREPARATION_MODULES = ("schema.py", "contracts.py", "preparation.py", "months.py")
# What decides a fitted model and its metrics, besides the data and the request: preparation, features,
# fitting, evaluation. Not the report, messages or request parsing: editing those retrains nothing.
TRAINING_MODULES = (*PREPARATION_MODULES, "feature_names.py", "features.py", "training.py", "training_plan.py", "xgboost_params.py", "metrics.py")


def digest(description: object) -> str:
    """sha256 of a JSON description (keys sorted: the same description always gives the same key)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


@cache
def code_version(modules: tuple[str, ...]) -> str:
    """taxiflow's version plus a digest of the named modules of `core/`.

    A version number alone would keep serving results of edited code between releases; the digest
    changes with any edit of the code that computes them.
    """
    files = [_CORE_DIR / name for name in modules]
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{taxiflow.__version__}+{h.hexdigest()[:12]}"


def prepared_trips_key(taxi: str, month: str, data_identity: str, columns: list[str], month_window_days: int | None) -> str:
    """The identity of one month's prepared trips (after the row contracts, before features).

    The columns read are part of it: a row contract applies only to a column that is read.
    """
    return digest(
        {
            "what": "prepared-trips",
            "taxi": taxi,
            "month": month,
            "data": data_identity,
            "columns": columns,
            "month_window_days": month_window_days,
            "code": code_version(PREPARATION_MODULES),
        }
    )


def training_key(taxi: str, months: tuple[str, ...], data_identities: tuple[str, ...], options: dict[str, object]) -> str:
    """The identity of a training run's inputs: data digests, trip type, months, features and parameters, code version (`TRAINING_MODULES`).

    Two runs with the same key fit the same model: the second can return the first's.
    """
    return digest(
        {
            "what": "training",
            "taxi": taxi,
            "months": list(months),
            "data": list(data_identities),
            "options": options,
            "code": code_version(TRAINING_MODULES),
        }
    )
