"""What the terminal shows: taxiflow's own messages, not library noise or tracebacks of expected errors.

At the default verbosity, for errors taxiflow expects (its own error types) the console gets the
one clear message the CLI prints; Prefect's copies of the traceback go only to the run's logs in
the Prefect API/UI (its API handler sees every record first). `-v` shows everything. Third-party
lines that say nothing to a user (MLflow's pip-version and schema-creation notices) are dropped
from the console here, not suppressed globally.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path

from taxiflow.core.errors import TaxiflowError

_MLFLOW_NOISE = (
    "Failed to resolve installed pip version",
    "Detected uv project",
    "Creating initial MLflow database tables",
    "Updating database tables",
    "Copied uv.lock to model artifacts",  # run from the repository (a uv project): MLflow keeps its lock with the model
    "Copied pyproject.toml to model artifacts",
)


@functools.cache  # asked on every ERROR record; the error classes are all loaded by then
def _expected_error_names() -> tuple[str, ...]:
    names, pending = set(), [TaxiflowError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return tuple(sorted(names))


def _is_expected(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TaxiflowError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class ExpectedErrorConsoleFilter(logging.Filter):
    """On Prefect's console handler: drop the records that repeat an expected error (with its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_expected(record.exc_info[1]):
            return False
        if record.levelno >= logging.ERROR:
            message = record.getMessage()
            if any(f"{name}(" in message or f"{name}:" in message for name in _expected_error_names()):
                return False
            if "Finished in state NotReady(" in message:  # a task waiting on the one that failed
                return False
        return True


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_prefect_console() -> None:
    """Point Prefect at its own logging config plus our console filter.

    Must run before anything imports prefect: Prefect configures logging once per process, and
    later set-ups only change levels. Found without importing prefect for that reason.
    """
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return
    config = yaml.safe_load((Path(spec.submodule_search_locations[0]) / "logging" / "logging.yml").read_text())
    config.setdefault("filters", {})["taxiflow_expected_errors"] = {"()": f"{__name__}.ExpectedErrorConsoleFilter"}
    config["handlers"]["console"]["filters"] = ["taxiflow_expected_errors"]
    # Outside the state dir: a refused command must leave no state behind. Same content for every run.
    path = Path(tempfile.gettempdir()) / f"taxiflow-prefect-logging-{os.getuid()}.yml"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)  # atomic: concurrent runs write the same content
    os.environ["PREFECT_LOGGING_CONFIG_PATH"] = str(path)


def quiet_mlflow_console() -> None:
    for name in ("mlflow.utils.environment", "mlflow.store.db.utils", "mlflow.models.model", "mlflow.utils.uv_utils"):
        logging.getLogger(name).addFilter(_DropMessages(_MLFLOW_NOISE))
