"""MLflow adapter: one run per training, the model as plain files, registration as the commit point.

Uses MlflowClient with explicit ids; the fluent API is touched only inside `log_model`, pinned
to our run, because pyfunc logging has no client-side equivalent.

A training's life in the registry: `preflight` (before any data is read: the store answers, the
schema exists, the experiment and model name are usable) -> `log_run` -> `register` (a version
tagged `taxiflow.state=pending`) -> whatever must succeed with it (the report) -> `commit`
(`taxiflow.state=committed`, run FINISHED). A failure in between calls `abandon`: the version is
deleted and the run marked FAILED. A process killed in between leaves a version that stays
`pending`: nothing that reads the registry treats it as usable.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import random
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import mlflow
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from taxiflow.core.errors import TaxiflowError
from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.summary import RegisteredModel, TrainingFacts
from taxiflow.core.training import DurationModel
from taxiflow.io.file_lock import exclusive_file_lock
from taxiflow.io.model_bundle import save_model_bundle
from taxiflow.io.uris import redact_uri as redact_uri  # re-exported: flows import it from here

_log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's HTTP client retries 7 times with backoff factor 2 by default: ~4 minutes before one call
# gives up (a wrong URI was found out only after the fit). Keep each call's own retries short and
# retry whole operations here, within a budget the caller sets. A user's environment still wins.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # an integer, as MLflow parses it
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# MLflow writes "View run at: <tracking URI>/..." to stdout whenever a run ends: the URI exactly as
# given, password included (tests/test_planted_secrets.py found it). taxiflow prints its own, masked.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

STATE_TAG = "taxiflow.state"
PENDING, COMMITTED = "pending", "committed"
# On a version: the identity of its inputs, and the summary `taxiflow train --json` printed (returned again by an identical rerun).
TRAINING_KEY_TAG = "taxiflow.training_key"
SUMMARY_TAG = "taxiflow.summary"
_FLUENT_API_LOCK = threading.Lock()

warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
warnings.filterwarnings("ignore", message=".*input example was not provided.*")

_PYFUNC_FILE = Path(__file__).resolve().parent.parent / "serving" / "duration_pyfunc.py"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SERVING_DISTRIBUTIONS = ("mlflow", "xgboost-cpu", "numpy", "scipy", "pandas", "polars", "pyarrow")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "PULocationID"), ColSpec("long", "DOLocationID"), ColSpec("double", "trip_distance", required=False)]),
    outputs=Schema([ColSpec("double")]),
)


def _ui_base(tracking_uri: str) -> str | None:
    """The MLflow UI's address for a tracking server (None for local stores); credentials never in links."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return None
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def mlflow_version_url(tracking_uri: str, model_name: str, version: str) -> str | None:
    base = _ui_base(tracking_uri)
    return None if base is None else f"{base}/#/models/{quote(model_name)}/versions/{version}"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    base = _ui_base(tracking_uri)
    return None if base is None else f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def _requirements() -> list[str]:
    reqs = []
    for dist in _SERVING_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return reqs


@contextlib.contextmanager
def _without_predict_type_hint_warning() -> Iterator[None]:
    """Drop MLflow's nag that `predict` has no type hints: the signature is declared explicitly.

    A plain warnings filter can't: MLflow's log_model pushes a "once" filter for UserWarning in
    front of it. So the display is filtered for the duration of the call instead.
    """
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "type hints to the `predict` method" not in str(message):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class TrackingUnavailableError(TaxiflowError):
    """The tracking store can't be used: unreachable, unwritable, or refusing the experiment or model name."""


# SQLite busy, a server restarting or gone for a moment, a database server dropping connections.
_TRANSIENT_MARKERS = ("database is locked", "Max retries exceeded", "Connection refused", "could not connect to server", "server closed the connection")


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: the store was unreachable, restarting, overloaded or briefly locked."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if type(current).__name__ in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError"):
            return True
        if any(marker in text for marker in _TRANSIENT_MARKERS):
            return True
        if isinstance(current, mlflow.exceptions.MlflowException) and current.get_http_status_code() in (429, 500, 502, 503, 504):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_transient(operation: Callable[[], T], what: str, budget_s: float, *, first_delay_s: float = 1.0) -> T:
    """Run `operation`, retrying transient store errors with exponential backoff and jitter for up to `budget_s`."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    while True:
        try:
            return operation()
        except Exception as exc:
            remaining = deadline - time.monotonic()
            if not _is_transient(exc) or remaining <= 0:
                raise
            pause = min(delay * random.uniform(0.5, 1.0), remaining)
            _log.warning("MLflow: %s failed (%s); retrying in %.1f s", what, str(exc).splitlines()[0][:200], pause)
            time.sleep(pause)
            delay = min(delay * 2, 16.0)


class TrackingStore:
    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        *,
        local_artifact_root: Path | None = None,
        retry_budget_s: float = 120.0,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.local_artifact_root = local_artifact_root
        self.retry_budget_s = retry_budget_s
        self._client: MlflowClient | None = None
        if urlsplit(tracking_uri).password:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # even if a user turned it on

    @property
    def client(self) -> MlflowClient:
        # Created on first use: MLflow connects (and, on a new SQLite file, creates the schema) as
        # soon as a client exists, which `preflight` must do under its lock.
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def shown_uri(self) -> str:
        """The URI as it may be printed or logged (password masked)."""
        return redact_uri(self.tracking_uri)

    @property
    def _sqlite_path(self) -> Path | None:
        return Path(self.tracking_uri.removeprefix("sqlite:///")) if self.tracking_uri.startswith("sqlite:///") else None

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        return retry_transient(operation, what, self.retry_budget_s)

    # --- before any work ------------------------------------------------------------------------

    def preflight(self, model_name: str) -> str:
        """Check, in seconds, what registration will need; create the schema and experiment once.

        Returns the experiment id. Raises TrackingUnavailableError naming the (redacted) URI.
        """
        shown = redact_uri(self.tracking_uri)
        try:
            mlflow.utils.validation._validate_model_name(model_name)
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingUnavailableError(f"model name {model_name!r} is not valid in MLflow: {exc.message}") from None
        db = self._sqlite_path
        try:
            if db is not None:
                return self._preflight_sqlite(db, model_name)
            if self.tracking_uri.startswith(("http://", "https://")):
                self._probe_server()
            # Bounded: a server that answered the probe answers these, or fails them quickly.
            experiment_id = retry_transient(self._experiment_id, "creating the experiment", 10.0)
            retry_transient(lambda: self.client.search_registered_models(f"name = '{model_name}'", max_results=1), "reading the registry", 10.0)
            return experiment_id
        except TrackingUnavailableError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise TrackingUnavailableError(f"MLflow tracking store {shown} is not usable: {first}") from exc

    def _preflight_sqlite(self, db: Path, model_name: str) -> str:
        directory = db.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise TrackingUnavailableError(f"MLflow tracking store {self.tracking_uri}: {directory} is not a writable directory ({exc.strerror})") from None
        # MLflow creates or upgrades the schema on the first connection of each store; two processes
        # doing it at once corrupt alembic's version table. One at a time, and only once.
        with exclusive_file_lock(db.with_name(db.name + ".lock")):
            self.client.search_experiments(max_results=1)
            self.client.search_registered_models(max_results=1)
            return self._experiment_id()

    def _probe_server(self) -> None:
        """One cheap request with two quick retries (not MLflow's ~4 minutes of them)."""
        from mlflow.tracking._tracking_service.utils import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        creds = get_default_host_creds(self.tracking_uri)
        try:
            response = http_request(
                creds,
                "/api/2.0/mlflow/experiments/search",
                "POST",
                json={"max_results": 1},
                max_retries=2,
                backoff_factor=0.5,
                timeout=5,
                raise_on_status=False,
            )
        except Exception as exc:  # noqa: BLE001 - whatever the failure (network, MLflow, TLS), the server is unreachable
            reason = str(exc).splitlines()[0][:200]
            if "Connection refused" in str(exc) or "NewConnectionError" in str(exc):
                reason = "nothing answers there (connection refused)"
            raise TrackingUnavailableError(f"MLflow tracking server {redact_uri(self.tracking_uri)} is not reachable: {reason}") from None
        if response.status_code in (401, 403):
            raise TrackingUnavailableError(f"MLflow tracking server {redact_uri(self.tracking_uri)} refused the credentials (HTTP {response.status_code})")
        if response.status_code != 200:
            raise TrackingUnavailableError(
                f"MLflow tracking server {redact_uri(self.tracking_uri)} answered HTTP {response.status_code} to a search: is it an MLflow server?"
            )

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingUnavailableError(
                    f"MLflow experiment {self.experiment_name!r} is deleted in {redact_uri(self.tracking_uri)}: restore it or choose another name"
                )
            return experiment.experiment_id
        artifact_location = None
        # A tracking server decides where artifacts live; a local store keeps them under state_dir.
        if self.local_artifact_root is not None and self.tracking_uri.startswith(("sqlite:", "file:")):
            artifact_location = (self.local_artifact_root / self.experiment_name).as_uri()
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            # Created concurrently by another run.
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                raise
            return experiment.experiment_id

    # --- the run and its version ------------------------------------------------------------------

    def log_run(
        self,
        facts: TrainingFacts,
        model: DurationModel,
        vocabulary: FeatureVocabulary,
        *,
        run_name: str,
        tags: dict[str, str] | None = None,
    ) -> tuple[str, str, str]:
        """Log params, metrics, vocabulary and model to a new run, left RUNNING: (experiment id, run id, model URI)."""
        experiment_id = self._retry(self._experiment_id, "finding the experiment")
        run = self._retry(lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags or {}), "creating the run")
        run_id = run.info.run_id
        try:
            self._retry(
                lambda: self.client.log_batch(
                    run_id,
                    params=[mlflow.entities.Param(k, v) for k, v in facts.mlflow_params().items()],
                    metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in facts.mlflow_metrics().items()],
                ),
                "logging params and metrics",
            )
            self._retry(lambda: self.client.log_text(run_id, vocabulary.to_json(), "feature_vocabulary.json"), "logging the vocabulary")
            self._retry(
                lambda: self.client.log_dict(run_id, {"train": facts.train.dropped, "val": facts.val.dropped}, "data_quality.json"), "logging data quality"
            )
            with tempfile.TemporaryDirectory(prefix="taxiflow-model-") as tmp:
                bundle = save_model_bundle(model, vocabulary, Path(tmp) / "bundle")
                model_uri = self._retry(lambda: self._log_model(run_id, bundle), "logging the model")
        except BaseException:
            self._terminate_quietly(run_id, "FAILED")
            raise
        return experiment_id, run_id, model_uri

    def _log_model(self, run_id: str, bundle: Path) -> str:
        # `log_model` exists only in MLflow's fluent API, whose tracking URI is process-global:
        # concurrent runs in one process (a backfill's pairs) take turns here.
        with _FLUENT_API_LOCK:
            mlflow.set_tracking_uri(self.tracking_uri)
            return self._log_model_fluently(run_id, bundle)

    def _log_model_fluently(self, run_id: str, bundle: Path) -> str:
        with mlflow.start_run(run_id=run_id), _without_predict_type_hint_warning():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(_PYFUNC_FILE),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(_PACKAGE_DIR)],
                pip_requirements=_requirements(),
                signature=SIGNATURE,
            )
        return info.model_uri

    def register(
        self, facts: TrainingFacts, experiment_id: str, run_id: str, model_uri: str, model_name: str, *, training_key: str | None = None
    ) -> RegisteredModel:
        """Register the logged model as a new version marked pending. Idempotent per run: a retry after a
        lost response finds the version it created instead of creating a second one."""
        tags = {
            STATE_TAG: PENDING,
            "taxi": facts.taxi,
            "train_month": facts.train.month,
            "val_month": facts.val.month,
            "rmse": f"{facts.rmse:.6f}",
        }
        if training_key is not None:
            tags[TRAINING_KEY_TAG] = training_key

        def attempt():
            existing = self.client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
            if existing:
                return existing[0]
            if not self.client.search_registered_models(f"name = '{model_name}'", max_results=1):
                try:
                    self.client.create_registered_model(model_name)
                except mlflow.exceptions.MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile by another run
                        raise
            # MLflow 3 logs a model as `models:/<model id>`: the version points at that logged model.
            model_id = model_uri.removeprefix("models:/")
            return self.client.create_model_version(model_name, model_uri, run_id=run_id, tags=tags, model_id=model_id)

        try:
            version = self._retry(attempt, "registering the model version")
        except BaseException:
            self._terminate_quietly(run_id, "FAILED")
            raise
        return RegisteredModel(
            run_id=run_id,
            experiment_id=experiment_id,
            model_name=model_name,
            model_version=str(version.version),
            model_uri=f"models:/{model_name}/{version.version}",
        )

    def find_trained(self, model_name: str, training_key: str) -> dict | None:
        """The summary of the newest committed version trained on exactly these inputs (`core.identity.training_key`), or None."""

        def search():
            if not self.client.search_registered_models(f"name = '{model_name}'", max_results=1):
                return []
            return self.client.search_model_versions(f"name = '{model_name}' and tags.`{TRAINING_KEY_TAG}` = '{training_key}'")

        for version in sorted(self._retry(search, "looking for an identical run"), key=lambda v: int(v.version), reverse=True):
            if version.tags.get(STATE_TAG) == COMMITTED and (summary := version.tags.get(SUMMARY_TAG)):
                return json.loads(summary)
        return None

    def commit(self, registered: RegisteredModel) -> None:
        """Mark the version usable (the gate's alias moves, if any, follow under the same lock)."""
        self._retry(
            lambda: self.client.set_model_version_tag(registered.model_name, registered.model_version, STATE_TAG, COMMITTED),
            "committing the model version",
        )

    # --- runs logged by hand, from any thread (MlflowClient with explicit run ids; never the fluent API) ---

    def experiment_id(self) -> str:
        return self._retry(self._experiment_id, "finding the experiment")

    def start_run(self, experiment_id: str, *, run_name: str, tags: dict[str, str]) -> str:
        """A new RUNNING run; nested under another when `tags` holds mlflow.parentRunId. Its id."""
        return self._retry(lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags), "creating a run").info.run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        if params:
            self._retry(lambda: self.client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()]), "logging params")

    def log_metric_steps(self, run_id: str, name: str, values: list[float]) -> None:
        """One metric's history, a value per step (a validation curve)."""
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(name, float(v), now, step) for step, v in enumerate(values)]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self._retry(partial(self.client.log_batch, run_id, metrics=metrics[start : start + 1000]), f"logging {name}")

    def running_runs_tagged(self, experiment_id: str, key: str, value: str) -> list[str]:
        """Runs still RUNNING with this tag (left so by a process that was killed)."""
        query = f"tags.`{key}` = '{value}' and attributes.status = 'RUNNING'"
        return [r.info.run_id for r in self._retry(lambda: self.client.search_runs([experiment_id], query, max_results=1000), "searching runs")]

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._retry(partial(self.client.set_tag, run_id, key, value), f"tagging the run ({key})")

    def terminate(self, run_id: str, status: str) -> None:
        """End a run as FINISHED, KILLED or FAILED (best effort for the last two: the reason matters more)."""
        if status == "FINISHED":
            self.finish(run_id)
        else:
            self._terminate_quietly(run_id, status)

    def finish(self, run_id: str) -> None:
        self._retry(lambda: self.client.set_terminated(run_id, status="FINISHED"), "finishing the run")

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        if metrics:
            self._retry(
                lambda: self.client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), 0, 0) for k, v in metrics.items()]),
                "logging metrics",
            )

    def log_artifact_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path), f"logging {path.name}")

    def log_report_run(
        self, *, run_name: str, tags: dict[str, str], params: dict[str, str], metrics: dict[str, float], texts: dict[str, str]
    ) -> tuple[str, str]:
        """A run recording a finished job (a scoring run's drift report): params, metrics, text artifacts, FINISHED.

        `texts` maps artifact paths to their content. Returns (experiment id, run id); a failure
        marks the run FAILED and is raised.
        """
        experiment_id = self._retry(self._experiment_id, "finding the experiment")
        run = self._retry(lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags), "creating the run")
        run_id = run.info.run_id
        try:
            self._retry(
                lambda: self.client.log_batch(
                    run_id,
                    params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()],
                    metrics=[mlflow.entities.Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                ),
                "logging params and metrics",
            )
            for artifact_file, text in texts.items():
                self._retry(partial(self.client.log_text, run_id, text, artifact_file), f"logging {artifact_file}")
            self.finish(run_id)
        except BaseException:
            self._terminate_quietly(run_id, "FAILED")
            raise
        return experiment_id, run_id

    def abandon(self, run_id: str, registered: RegisteredModel | None) -> None:
        """Undo a registration whose run failed before its commit point: delete the version, fail the run.

        Best-effort (the failure that got us here is what the caller reports); a version that can't
        be deleted stays tagged pending.
        """
        if registered is not None:
            try:
                self._retry(lambda: self.client.delete_model_version(registered.model_name, registered.model_version), "deleting the uncommitted version")
                _log.warning("deleted %s version %s: its run failed before the commit point", registered.model_name, registered.model_version)
            except Exception as exc:  # noqa: BLE001 - reported, and the version stays marked pending
                _log.error("could not delete %s version %s (left tagged %s=%s): %s", registered.model_name, registered.model_version, STATE_TAG, PENDING, exc)
        self._terminate_quietly(run_id, "FAILED")

    def _terminate_quietly(self, run_id: str, status: str) -> None:
        try:
            retry_transient(lambda: self.client.set_terminated(run_id, status=status), "marking the run", 15.0)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            _log.error("could not mark MLflow run %s %s: %s", run_id, status, exc)
