"""The search library (Optuna) behind `taxiflow tune`: a stored, resumable study; params files; the pruning callback.

The study lives in a database (SQLite in the state dir by default, `TAXIFLOW_TUNING_STORAGE` for
PostgreSQL), so a tune interrupted by Ctrl-C or a killed worker continues where it stopped: the next
run with the same setup opens the same study (`core.tuning.study_name`), marks the trials that were
running when it died as failed, and queues their parameters again. Only one tune works on a study at
a time (a lock file): a second one is refused rather than failing the first one's trials.

Trials run on threads (Prefect tasks): every call into the study goes through one lock (Optuna's
storage is shared; with SQLite, concurrent writers would otherwise wait on each other's locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from taxiflow.core.errors import InvalidArgumentError, TaxiflowError
from taxiflow.core.tuning import SearchSpace, TrialOutcome, params_document, parse_params_document, parse_search_space

if TYPE_CHECKING:
    import optuna

    from taxiflow.settings import TaxiflowSettings

BEST = "best"


class TuningBusyError(TaxiflowError):
    """Another tune is working on the same study."""


def load_toml(path: Path, *, what: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InvalidArgumentError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{what} {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_search_space(path: str) -> SearchSpace:
    return parse_search_space(load_toml(Path(path), what="search space file"), source=path)


def params_path(spec: str, taxi: str, settings: TaxiflowSettings) -> Path:
    """Where `--params SPEC` reads from: `best` is the last tune's result for the trip type, anything else a file."""
    return settings.params_dir() / f"{taxi}-best.toml" if spec == BEST else Path(spec)


def load_params_file(spec: str, taxi: str, settings: TaxiflowSettings) -> tuple[Path, dict[str, float | int]]:
    path = params_path(spec, taxi, settings)
    if spec == BEST and not path.is_file():
        raise InvalidArgumentError(f"--params best: no tuned parameters for {taxi} yet ({path}): run `taxiflow tune --taxi {taxi} ...` first")
    return path, parse_params_document(load_toml(path, what="params file"), source=str(path))


def write_params_file(path: Path, params: Mapping[str, float | int], provenance: Mapping[str, object]) -> Path:
    """Written whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(params_document(params, provenance=provenance))
    os.replace(tmp, path)
    return path


def storage_url(settings: TaxiflowSettings) -> str:
    if settings.tuning_storage is not None:
        return settings.tuning_storage.get_secret_value()
    return f"sqlite:///{(settings.state_dir / 'tuning.db').resolve()}"


@contextlib.contextmanager
def study_lock(settings: TaxiflowSettings, name: str) -> Iterator[None]:
    """Held for a whole tune; refused (not waited for) when another tune holds it."""
    path = (settings.state_dir / "tuning-locks" / f"{name}.lock").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuningBusyError(f"another `taxiflow tune` is working on study {name}: wait for it, or stop it first") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Study:
    """An Optuna study (minimizing validation RMSE), opened or created, used from several threads."""

    def __init__(self, url: str, name: str, *, sampler_seed: int, pruning: bool) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is reported by the flow, once
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
        # Median pruning on the validation curve: a trial whose RMSE at a round is worse than the
        # median of earlier trials at that round stops there (after 5 complete trials and 5 rounds).
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5) if pruning else optuna.pruners.NopPruner()
        self._study = optuna.create_study(
            study_name=name,
            storage=self._storage,
            sampler=optuna.samplers.TPESampler(seed=sampler_seed),
            pruner=pruner,
            direction="minimize",
            load_if_exists=True,
        )
        self.name = name
        self._lock = threading.Lock()

    def recover_interrupted(self, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
        """Trials left running by a tune that died: failed now; those that were fitting (every parameter chosen) queued to run again."""
        from optuna.trial import TrialState

        with self._lock:
            stale = [t for t in self._study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
            study_id = self._storage.get_study_id_from_name(self.name)
            for trial in stale:
                trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                self._storage.set_trial_state_values(trial_id, TrialState.FAIL)
                if set(trial.params) == {r.name for r in space}:  # else it died while being asked: nothing to redo
                    self._study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        return stale

    def finished(self) -> int:
        """Trials that count towards the requested number: complete or pruned."""
        from optuna.trial import TrialState

        with self._lock:
            return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in self._study.get_trials(deepcopy=False))

    def ask(self, space: SearchSpace) -> tuple[optuna.trial.Trial, dict[str, float | int]]:
        with self._lock:
            trial = self._study.ask()
            params: dict[str, float | int] = {}
            for r in space:
                if r.integer:
                    params[r.name] = trial.suggest_int(r.name, int(r.low), int(r.high), log=r.log)
                else:
                    params[r.name] = trial.suggest_float(r.name, r.low, r.high, log=r.log)
            return trial, params

    def set_attr(self, trial: optuna.trial.Trial, key: str, value: object) -> None:
        with self._lock:
            trial.set_user_attr(key, value)

    def reporter(self, trial: optuna.trial.Trial) -> Callable[[int, float], bool]:
        """report(round, validation RMSE) -> whether to stop this trial (pruned)."""

        def report(step: int, value: float) -> bool:
            with self._lock:
                trial.report(value, step)
                return trial.should_prune()

        return report

    def tell(self, trial: optuna.trial.Trial, outcome: TrialOutcome) -> None:
        from optuna.trial import TrialState

        with self._lock:
            if outcome.state == "complete":
                self._study.tell(trial, outcome.rmse)
            else:
                self._study.tell(trial, state=TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL)

    def outcomes(self) -> list[TrialOutcome]:
        """Every trial of the study so far (this tune's and earlier ones')."""
        from optuna.trial import TrialState

        names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
        with self._lock:
            trials = self._study.get_trials(deepcopy=True)
        outcomes = []
        for t in trials:
            if t.state not in names:
                continue
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else 0.0
            outcomes.append(
                TrialOutcome(
                    number=t.number,
                    state=names[t.state],
                    params=dict(t.params),
                    rmse=t.value if t.state == TrialState.COMPLETE else None,
                    best_iteration=t.user_attrs.get("best_iteration"),
                    rounds=int(t.user_attrs.get("rounds", len(t.intermediate_values))),
                    seconds=seconds,
                    mlflow_run_id=t.user_attrs.get("mlflow_run_id"),
                    error=t.user_attrs.get("error"),
                )
            )
        return outcomes

    def plot(self, directory: Path) -> list[Path]:
        """The optimization history and the parameters' importances (PNG); importances need 2+ complete trials."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as optuna_plots

        directory.mkdir(parents=True, exist_ok=True)
        written = []
        with self._lock, _quiet_experimental_warnings():
            for name, plot in (
                ("optimization_history.png", optuna_plots.plot_optimization_history),
                ("param_importances.png", optuna_plots.plot_param_importances),
            ):
                try:
                    plot(self._study)
                except (ValueError, RuntimeError, ZeroDivisionError):
                    continue  # too few complete trials for this plot
                figure = plt.gcf()  # the plot's own, new figure
                figure.tight_layout()
                figure.savefig(directory / name, dpi=100)
                plt.close(figure)
                written.append(directory / name)
        return written


@contextlib.contextmanager
def _quiet_experimental_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental.*")
        yield


def pruning_callback(report: Callable[[int, float], bool], pruned: list[bool]):
    """An XGBoost callback: each round's validation RMSE goes to the study, which may stop the fit (`pruned` then holds True)."""
    import xgboost as xgb

    class ReportValidationRmse(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
            history = evals_log.get("validation", {}).get("rmse")
            if not history:
                return False
            if report(epoch, float(history[-1])):
                pruned.append(True)
                return True
            return False

    return ReportValidationRmse()
