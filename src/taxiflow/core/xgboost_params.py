"""XGBoost's hyperparameters (the course's tuned values), importable without numpy: the CLI checks them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from taxiflow.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class XGBoostParams:
    """The course's tuned parameters (hyperopt search in the course's notebooks)."""

    learning_rate: float = 0.09585355369315604
    max_depth: int = 30
    min_child_weight: float = 1.060597050922164
    reg_alpha: float = 0.018060244040060163
    reg_lambda: float = 0.011658731377413597
    seed: int = 42
    objective: str = "reg:squarederror"
    num_boost_round: int = 100
    early_stopping_rounds: int = 20
    tree_method: str = "hist"
    nthread: int = 0  # 0: all cores

    def with_overrides(self, **overrides: object) -> XGBoostParams:
        """Replace the given parameters; None means 'keep the default'."""
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}  # typed and checked by validate()
        unknown = set(given) - set(asdict(self))
        if unknown:
            raise InvalidArgumentError(f"unknown XGBoost parameter(s): {', '.join(sorted(unknown))}")
        params = replace(self, **given)
        params.validate()
        return params

    def validate(self) -> None:
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.max_depth >= 1, "max_depth must be >= 1"),
            (self.min_child_weight >= 0, "min_child_weight must be >= 0"),
            (self.reg_alpha >= 0, "reg_alpha must be >= 0"),
            (self.reg_lambda >= 0, "reg_lambda must be >= 0"),
            (self.num_boost_round >= 1, "num_boost_round must be >= 1"),
            (self.early_stopping_rounds >= 0, "early_stopping_rounds must be >= 0 (0 disables it)"),
            (self.nthread >= 0, "nthread must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)

    def min_splittable_count(self) -> int:
        """Fewest training rows a one-hot category needs for any split to use it.

        A split on a one-hot column puts the category's rows in one child, whose hessian is their
        count (squared error: one per row, collapsed rows weigh their count); XGBoost refuses a child
        below min_child_weight. A rarer category's column can never be used, so dropping it from the
        vocabulary leaves the model unchanged and spares every tree node a scan of it.
        """
        if self.objective != "reg:squarederror":
            return 1
        return max(1, math.ceil(self.min_child_weight))

    def booster_params(self) -> dict[str, object]:
        params = asdict(self)
        params.pop("num_boost_round")
        params.pop("early_stopping_rounds")
        if params["nthread"] == 0:
            params.pop("nthread")
        return params
