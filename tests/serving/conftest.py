"""A real tracking server holding trained versions, and the real service (`taxiflow serve`) in front of it."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.support.servers import VENV_BIN, base_env, free_port, mlflow_server, running_process

MODEL = "nyc-taxi-duration"
# Three versions, registered without promotion (tests move the alias themselves).
VERSIONS = {
    "1": ("--model", "xgboost", "--num-boost-round", "30"),
    "2": ("--model", "linear"),
    "3": ("--model", "linear", "--features", "pu,do,distance"),
}


@dataclass(frozen=True)
class Registry:
    uri: str
    root: Path  # the server's files: its artifacts are under root / "artifacts"

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def set_champion(self, version: str) -> None:
        self.client().set_registered_model_alias(MODEL, "champion", version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, prefect_api, tlc_dir) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry")
    with mlflow_server(root / "mlflow") as uri:
        for version, options in VERSIONS.items():
            result = subprocess.run(
                [
                    str(VENV_BIN / "taxiflow"),
                    "train",
                    "--taxi",
                    "green",
                    "--train-month",
                    "2023-01",
                    "--val-month",
                    "2023-02",
                    "--data-dir",
                    str(tlc_dir),
                    "--tracking-uri",
                    uri,
                    "--promote",
                    "never",
                    *options,
                    "--json",
                ],
                cwd=root,
                env=base_env(PREFECT_API_URL=prefect_api, TAXIFLOW_STATE_DIR=str(root / "state")),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            assert json.loads(result.stdout.strip().splitlines()[-1])["model_version"] == version
        registry = Registry(uri, root / "mlflow")
        registry.set_champion("1")
        yield registry


@dataclass
class Service:
    url: str
    log: Path
    process: subprocess.Popen

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def predict(self, body, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/predict", json=body, timeout=60, **kwargs)


@contextlib.contextmanager
def running_service(registry: Registry, workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Service]:
    """`taxiflow serve` as a user starts it, healthy (process up); `/ready` may still be coming."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(VENV_BIN / "taxiflow"), "serve", "--port", str(port), "--tracking-uri", registry.uri, *args]
    log = workdir / f"serve-{port}.log"
    with running_process(cmd, f"http://127.0.0.1:{port}/health", log, base_env(TAXIFLOW_STATE_DIR=str(workdir / "state"), **(env or {}))) as process:
        yield Service(f"http://127.0.0.1:{port}", log, process)
