"""Where serving gets models: which version an alias names, and that version's plain model files.

A tracking server is read over its REST API with httpx, so the serving process never imports MLflow
(~1.3 s and ~190 MB of a process that should start in under 3 s and stay small). Any other tracking
URI (a local SQLite store, a server whose artifacts are not proxied) goes through MLflow itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from taxiflow.core.errors import TaxiflowError
from taxiflow.io.model_bundle import MANIFEST_FILE, VOCABULARY_FILE, bundle_model_file
from taxiflow.io.uris import redact_uri

# Where the pyfunc model keeps its `bundle` artifact, under the logged model's root.
_BUNDLE_PATH = "artifacts/bundle"
_PROXIED_ARTIFACTS = "mlflow-artifacts:/"


class ModelStoreError(TaxiflowError):
    """The registry could not be read, or a version's files could not be fetched."""


@dataclass(frozen=True)
class ModelRef:
    """A registered version, as serving reports it."""

    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


class ModelStore(Protocol):
    shown_uri: str

    def version_for_alias(self, alias: str) -> ModelRef | None: ...

    def download_bundle(self, version: str, dest: Path) -> Path: ...


def model_store_for(tracking_uri: str, model_name: str, *, timeout_s: float = 10.0) -> ModelStore:
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return RestModelStore(tracking_uri, model_name, timeout_s=timeout_s)
    return MlflowModelStore(tracking_uri, model_name)


class RestModelStore:
    """MLflow's REST API: registry reads and proxied artifact downloads (`mlflow server`'s default)."""

    def __init__(self, tracking_uri: str, model_name: str, *, timeout_s: float = 10.0) -> None:
        parts = urlsplit(tracking_uri)
        self.model_name = model_name
        self.shown_uri = redact_uri(tracking_uri)
        self._fallback: MlflowModelStore | None = None
        self._tracking_uri = tracking_uri
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        # MLflow's own conventions for credentials: user:password in the URI, or its environment variables.
        auth: httpx.Auth | None = None
        user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
        headers = {}
        if user and password:
            auth = httpx.BasicAuth(user, password)
        elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=base, auth=auth, headers=headers, timeout=timeout_s)

    def _get(self, path: str, **params: str) -> httpx.Response:
        try:
            return self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ModelStoreError(f"MLflow tracking server {self.shown_uri} is not reachable: {type(exc).__name__}: {exc}") from None

    def _json(self, response: httpx.Response, what: str) -> dict:
        if response.status_code != 200:
            raise ModelStoreError(f"MLflow tracking server {self.shown_uri}: {what} failed with HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def version_for_alias(self, alias: str) -> ModelRef | None:
        response = self._get("/api/2.0/mlflow/registered-models/alias", name=self.model_name, alias=alias)
        if response.status_code in (400, 404) and _error_code(response) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            if response.status_code == 404 or "not found" in response.text.lower():
                return None  # no such alias (or no such model yet): nothing to serve, not an error
        version = self._json(response, f"reading alias {alias!r} of {self.model_name!r}")["model_version"]
        tags = {t["key"]: t.get("value", "") for t in version.get("tags", [])}
        return ModelRef(version=str(version["version"]), run_id=version.get("run_id"), tags=tags)

    def download_bundle(self, version: str, dest: Path) -> Path:
        response = self._get("/api/2.0/mlflow/model-versions/get-download-uri", name=self.model_name, version=version)
        root = self._json(response, f"locating {self.model_name} v{version}")["artifact_uri"]
        if not root.startswith(_PROXIED_ARTIFACTS):
            # Artifacts stored where the server does not proxy them (e.g. `--no-serve-artifacts`): MLflow knows how.
            self._fallback = self._fallback or MlflowModelStore(self._tracking_uri, self.model_name)
            return self._fallback.download_bundle(version, dest)
        prefix = f"/api/2.0/mlflow-artifacts/artifacts/{quote(root.removeprefix(_PROXIED_ARTIFACTS).strip('/'))}/{_BUNDLE_PATH}"
        dest.mkdir(parents=True, exist_ok=True)
        manifest = self._download(f"{prefix}/{MANIFEST_FILE}", dest / MANIFEST_FILE, version)
        model_file = bundle_model_file(manifest.read_text())
        for name in (VOCABULARY_FILE, model_file):
            self._download(f"{prefix}/{name}", dest / name, version)
        return dest

    def _download(self, path: str, target: Path, version: str) -> Path:
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code != 200:
                    raise ModelStoreError(f"{self.model_name} v{version}: {target.name} could not be downloaded (HTTP {response.status_code})")
                with open(target, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise ModelStoreError(f"{self.model_name} v{version}: {target.name} could not be downloaded ({type(exc).__name__}: {exc})") from None
        return target


class MlflowModelStore:
    """Any tracking URI MLflow understands (SQLite, file stores, servers that don't proxy artifacts)."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.model_name = model_name
        self.shown_uri = redact_uri(tracking_uri)
        self._tracking_uri = tracking_uri

    def _registry(self):
        from taxiflow.io.registry import ModelRegistry
        from taxiflow.io.tracking import TrackingStore

        return ModelRegistry(TrackingStore(self._tracking_uri, experiment_name="unused", retry_budget_s=10.0), self.model_name)

    def version_for_alias(self, alias: str) -> ModelRef | None:
        found = self._registry().version_by_alias(alias)
        return None if found is None else ModelRef(version=str(found.version), run_id=found.run_id, tags=dict(found.tags))

    def download_bundle(self, version: str, dest: Path) -> Path:
        import mlflow

        registry = self._registry()
        try:
            download_uri = registry.client.get_model_version_download_uri(self.model_name, version)
            with tempfile.TemporaryDirectory(prefix="taxiflow-serve-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{download_uri.rstrip('/')}/{_BUNDLE_PATH}", dst_path=tmp, tracking_uri=self._tracking_uri
                )
                shutil.copytree(local, dest, dirs_exist_ok=True)
        except Exception as exc:  # MLflow raises many types; the message says which version failed
            raise ModelStoreError(f"{self.model_name} v{version}: model files could not be downloaded ({str(exc).strip()[:300]})") from exc
        return dest


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json().get("error_code")
    except ValueError:
        return None
