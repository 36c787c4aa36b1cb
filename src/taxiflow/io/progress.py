"""Progress of long steps on an interactive terminal; nothing in logs, pipes or CI."""

from __future__ import annotations

import sys
from typing import Any


def terminal_progress_enabled() -> bool:
    return sys.stderr.isatty()


def xgboost_fit_progress(num_boost_round: int, *, enabled: bool | None = None) -> list[Any]:
    """XGBoost callbacks drawing a boosting-rounds bar (empty when stderr is not a terminal)."""
    if not (terminal_progress_enabled() if enabled is None else enabled):
        return []
    import xgboost as xgb
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    class RoundsBar(xgb.callback.TrainingCallback):
        def before_training(self, model):
            self.progress = Progress("fit", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True, console=None)
            self.progress.start()
            self.task = self.progress.add_task("boosting rounds", total=num_boost_round)
            return model

        def after_iteration(self, model, epoch, evals_log) -> bool:
            self.progress.update(self.task, completed=epoch + 1)
            return False  # never stops training

        def after_training(self, model):
            self.progress.stop()
            return model

    return [RoundsBar()]
