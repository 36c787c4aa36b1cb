"""MLflow adapter: one run per training, the model as plain files, registration last.

Uses MlflowClient with explicit ids; the fluent API is touched only inside `log_model`, pinned
to our run, because pyfunc logging has no client-side equivalent.
"""

from __future__ import annotations

import importlib.metadata
import warnings
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.summary import RegisteredModel, TrainingFacts
from taxiflow.core.training import DurationModel
from taxiflow.io.model_bundle import save_model_bundle

warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
warnings.filterwarnings("ignore", message=".*input example was not provided.*")

_PYFUNC_FILE = Path(__file__).resolve().parent.parent / "serving" / "duration_pyfunc.py"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SERVING_DISTRIBUTIONS = ("mlflow", "xgboost-cpu", "numpy", "scipy", "pandas", "polars", "pyarrow")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "PULocationID"), ColSpec("long", "DOLocationID"), ColSpec("double", "trip_distance", required=False)]),
    outputs=Schema([ColSpec("double")]),
)


def redact_uri(uri: str) -> str:
    """A URI safe to print or log: any password replaced by ***."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def _requirements() -> list[str]:
    reqs = []
    for dist in _SERVING_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return reqs


class TrackingStore:
    def __init__(self, tracking_uri: str, experiment_name: str, *, local_artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.local_artifact_root = local_artifact_root
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        # A tracking server decides where artifacts live; a local store keeps them under state_dir.
        if self.local_artifact_root is not None and self.tracking_uri.startswith(("sqlite:", "file:")):
            artifact_location = (self.local_artifact_root / self.experiment_name).as_uri()
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            # Created concurrently by another run.
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def log_and_register(
        self,
        facts: TrainingFacts,
        model: DurationModel,
        vocabulary: FeatureVocabulary,
        *,
        model_name: str,
        run_name: str,
        tags: dict[str, str] | None = None,
    ) -> RegisteredModel:
        """Log params, metrics, vocabulary and model; register a version only if all of that succeeded."""
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        run_id = run.info.run_id
        try:
            self.client.log_batch(
                run_id,
                params=[mlflow.entities.Param(k, v) for k, v in facts.mlflow_params().items()],
                metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in facts.mlflow_metrics().items()],
            )
            self.client.log_text(run_id, vocabulary.to_json(), "feature_vocabulary.json")
            self.client.log_dict(run_id, {"train": facts.train.dropped, "val": facts.val.dropped}, "data_quality.json")
            with tempfile.TemporaryDirectory(prefix="taxiflow-model-") as tmp:
                bundle = save_model_bundle(model, vocabulary, Path(tmp) / "bundle")
                mlflow.set_tracking_uri(self.tracking_uri)
                with mlflow.start_run(run_id=run_id):
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=str(_PYFUNC_FILE),
                        artifacts={"bundle": str(bundle)},
                        code_paths=[str(_PACKAGE_DIR)],
                        pip_requirements=_requirements(),
                        signature=SIGNATURE,
                    )
            version = mlflow.register_model(
                info.model_uri,
                model_name,
                tags={"taxi": facts.taxi, "train_month": facts.train.month, "val_month": facts.val.month, "rmse": f"{facts.rmse:.6f}"},
            )
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        return RegisteredModel(
            run_id=run_id,
            experiment_id=experiment_id,
            model_name=model_name,
            model_version=str(version.version),
            model_uri=f"models:/{model_name}/{version.version}",
        )
