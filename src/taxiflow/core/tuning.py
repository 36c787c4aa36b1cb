"""Hyperparameter search, without the search library: what is searched, how a study is named, what a best result is.

The default space is the course's hyperopt space (its notebook's `search_space`): max_depth 4..100,
learning_rate log-uniform e^-3..1, reg_alpha e^-5..e^-1, reg_lambda e^-6..e^-1, min_child_weight
e^-1..e^3, objective reg:squarederror with early stopping. A small TOML file replaces the range of
any of them (`parse_search_space`). The search itself (Optuna) is an adapter: `io/tuning.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.identity import TRAINING_MODULES, code_version, digest

# The XGBoost parameters a search may vary (XGBoostParams' names), and whether each is an integer.
TUNABLE = {"max_depth": True, "learning_rate": False, "reg_alpha": False, "reg_lambda": False, "min_child_weight": False}


@dataclass(frozen=True)
class ParamRange:
    name: str
    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return TUNABLE[self.name]

    def describe(self) -> dict[str, object]:
        return {"low": self.low, "high": self.high, "log": self.log}


SearchSpace = tuple[ParamRange, ...]

COURSE_SPACE: SearchSpace = (
    ParamRange("max_depth", 4, 100),
    ParamRange("learning_rate", math.exp(-3), 1.0, log=True),
    ParamRange("reg_alpha", math.exp(-5), math.exp(-1), log=True),
    ParamRange("reg_lambda", math.exp(-6), math.exp(-1), log=True),
    ParamRange("min_child_weight", math.exp(-1), math.exp(3), log=True),
)


def parse_search_space(document: Mapping[str, object], *, source: str) -> SearchSpace:
    """The course's space with the ranges `document` gives (a TOML file's `[space.<param>]` tables) replaced.

        [space.max_depth]
        high = 30
        [space.learning_rate]
        low = 0.05
        high = 0.5
        log = true

    A table may give any of low, high and log; the rest keep the course's value. Errors name the file and the key.
    """
    unknown_top = set(document) - {"space"}
    if unknown_top:
        raise InvalidArgumentError(f"{source}: unknown table(s) {', '.join(sorted(unknown_top))}: expected only [space.<parameter>] tables")
    given = document.get("space", {})
    if not isinstance(given, Mapping):
        raise InvalidArgumentError(f"{source}: 'space' must be a table of [space.<parameter>] tables")
    unknown = set(given) - set(TUNABLE)
    if unknown:
        raise InvalidArgumentError(f"{source}: cannot search {', '.join(sorted(unknown))}: the searchable parameters are {', '.join(TUNABLE)}")
    space = []
    for default in COURSE_SPACE:
        table = given.get(default.name)
        if table is None:
            space.append(default)
            continue
        where = f"{source}: [space.{default.name}]"
        if not isinstance(table, Mapping):
            raise InvalidArgumentError(f"{where} must be a table with low, high and/or log")
        extra = set(table) - {"low", "high", "log"}
        if extra:
            raise InvalidArgumentError(f"{where}: unknown key(s) {', '.join(sorted(extra))} (expected low, high, log)")
        for key in ("low", "high"):
            value = table.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
                raise InvalidArgumentError(f"{where}: {key} must be a finite number, got {value!r}")
        if "log" in table and not isinstance(table["log"], bool):
            raise InvalidArgumentError(f"{where}: log must be true or false, got {table['log']!r}")
        low, high = float(table.get("low", default.low)), float(table.get("high", default.high))
        log = bool(table.get("log", default.log))
        if not low < high:
            raise InvalidArgumentError(f"{where}: low ({low:g}) must be below high ({high:g})")
        if default.integer and (low != int(low) or high != int(high) or low < 1):
            raise InvalidArgumentError(f"{where}: {default.name} takes whole numbers >= 1, got {low:g}..{high:g}")
        if low < 0 or (log and low <= 0):
            raise InvalidArgumentError(f"{where}: low must be {'> 0 on a log scale' if log else '>= 0'}, got {low:g}")
        if default.name == "learning_rate" and high > 1:
            raise InvalidArgumentError(f"{where}: learning_rate must stay <= 1, got high {high:g}")
        space.append(ParamRange(default.name, low, high, log))
    return tuple(space)


def describe_space(space: SearchSpace) -> dict[str, dict[str, object]]:
    return {r.name: r.describe() for r in space}


def study_name(*, taxi: str, train_month: str, val_month: str, data: tuple[str, ...], setup: Mapping[str, object], space: SearchSpace) -> str:
    """One study per search problem: the same months (by content), setup and space continue the same study.

    Resuming is then automatic and safe: a rerun after an interruption adds trials to the study it
    left; any change to what a trial's score means (data, features, rounds, space, training code) starts another.
    """
    key = digest({"data": data, "setup": setup, "space": describe_space(space), "code": code_version(TRAINING_MODULES)})
    return f"tune-{taxi}-{train_month}-{val_month}-{key[:12]}"


@dataclass(frozen=True)
class TrialOutcome:
    """One trial, as the flow reports it."""

    number: int
    state: str  # complete, pruned or failed
    params: dict[str, float | int]
    rmse: float | None  # validation RMSE over every row (complete trials)
    best_iteration: int | None
    rounds: int  # boosting rounds run (fewer when pruned or stopped early)
    seconds: float
    mlflow_run_id: str | None
    error: str | None = None


def top_trials(outcomes: list[TrialOutcome], n: int = 10) -> list[TrialOutcome]:
    """The best complete trials, best first (ties: the earlier trial)."""
    complete = [o for o in outcomes if o.state == "complete" and o.rmse is not None]
    return sorted(complete, key=lambda o: (o.rmse, o.number))[:n]


def params_document(params: Mapping[str, float | int], *, provenance: Mapping[str, object]) -> str:
    """A params file (TOML) `taxiflow train --params` reads: the [xgboost] values, and where they came from."""
    lines = ["# XGBoost parameters found by `taxiflow tune` (read by `taxiflow train --params`)", "[xgboost]"]
    for name in TUNABLE:
        if name in params:
            value = params[name]
            lines.append(f"{name} = {int(value)}" if TUNABLE[name] else f"{name} = {float(value)!r}")
    lines += ["", "[source]"]
    for key, item in provenance.items():
        lines.append(f"{key} = {_toml_scalar(item)}")
    return "\n".join(lines) + "\n"


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def parse_params_document(document: Mapping[str, object], *, source: str) -> dict[str, float | int]:
    """The XGBoost values of a params file (its [xgboost] table), checked; errors name the file and the key."""
    table = document.get("xgboost")
    if not isinstance(table, Mapping) or not table:
        raise InvalidArgumentError(f"{source}: no [xgboost] table of parameters (written by `taxiflow tune`, or by hand: max_depth = 12, ...)")
    unknown = set(table) - set(TUNABLE)
    if unknown:
        raise InvalidArgumentError(f"{source}: [xgboost] has {', '.join(sorted(unknown))}: a params file sets only {', '.join(TUNABLE)}")
    values: dict[str, float | int] = {}
    for name, given in table.items():
        if isinstance(given, bool) or not isinstance(given, int | float):
            raise InvalidArgumentError(f"{source}: [xgboost] {name} must be a number, got {given!r}")
        if not math.isfinite(given) or (TUNABLE[name] and given != int(given)):
            raise InvalidArgumentError(f"{source}: [xgboost] {name} must be a {'whole' if TUNABLE[name] else 'finite'} number, got {given!r}")
        values[name] = int(given) if TUNABLE[name] else float(given)
    return values
