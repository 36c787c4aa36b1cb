"""The model registry's lifecycle: aliases `champion` (what serving loads) and `challenger` (the newest).

MLflow 3 aliases, not stages. Each promotion records on the promoted version who/why/when and which
version was champion before (`taxiflow.previous_champion`): that chain is the champion history, and
`rollback` follows it. MLflow has no compare-and-set on aliases, so promotions on one machine are
serialized by a file lock and re-read the champion under it (see `promotion_lock`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from taxiflow.core.errors import InvalidArgumentError, TaxiflowError
from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.training import DurationModel
from taxiflow.io.file_lock import exclusive_file_lock
from taxiflow.io.model_bundle import load_model_bundle
from taxiflow.io.tracking import COMMITTED, STATE_TAG, TrackingStore

CHAMPION, CHALLENGER = "champion", "challenger"
PREVIOUS_TAG = "taxiflow.previous_champion"
GATE_TAG = "taxiflow.gate"


class ModelLoadError(TaxiflowError):
    """A registered version's model files are missing or unusable."""


@contextmanager
def promotion_lock(state_dir: Path, tracking_uri: str, model_name: str) -> Iterator[None]:
    """Serialize gate decisions and alias moves for one registered model across processes on this machine.

    Runs on other machines don't see this lock: run promotions from one place (e.g. one work pool
    whose concurrency limit is 1), or accept that the last of two simultaneous promotions wins.
    """
    key = hashlib.sha256(f"{tracking_uri}\n{model_name}".encode()).hexdigest()[:16]
    with exclusive_file_lock(state_dir / "locks" / f"promotion-{key}.lock"):
        yield


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None
    created_ms: int


class ModelRegistry:
    def __init__(self, store: TrackingStore, model_name: str) -> None:
        self.store = store
        self.model_name = model_name

    @property
    def client(self):
        return self.store.client

    def _retry(self, operation, what: str):
        return self.store._retry(operation, what)

    # --- reading ------------------------------------------------------------------------------

    def version_by_alias(self, alias: str) -> ModelVersion | None:
        def read():
            try:
                return self.client.get_model_version_by_alias(self.model_name, alias)
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in exc.message.lower():
                    return None
                raise

        return self._retry(read, f"reading alias {alias}")

    def get_version(self, version: str) -> ModelVersion:
        """A version of this model, or InvalidArgumentError naming what is wrong."""
        if not str(version).isdigit():
            raise InvalidArgumentError(f"model version must be a number, got {version!r}")
        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in exc.message.lower():
                if not self.client.search_registered_models(f"name = '{self.model_name}'", max_results=1):
                    raise InvalidArgumentError(f"no registered model named {self.model_name!r} in {self.store.shown_uri}") from None
                raise InvalidArgumentError(f"{self.model_name} has no version {version}") from None
            raise

    def versions(self) -> list[VersionInfo]:
        found = self._retry(lambda: self.client.search_model_versions(f"name = '{self.model_name}'"), "listing versions")
        aliases = self._aliases()
        infos = [
            VersionInfo(str(v.version), tuple(sorted(a for a, ver in aliases.items() if ver == str(v.version))), dict(v.tags), v.run_id, v.creation_timestamp)
            for v in found
        ]
        return sorted(infos, key=lambda v: int(v.version))

    def _aliases(self) -> dict[str, str]:
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return {}
        return {alias: str(version) for alias, version in (registered.aliases or {}).items()}

    def load_version(self, version: str) -> tuple[DurationModel, FeatureVocabulary]:
        """The version's own model files (vocabulary JSON + UBJSON/JSON model), as serving loads them: no pickle."""
        try:
            download_uri = self.client.get_model_version_download_uri(self.model_name, version)
            with tempfile.TemporaryDirectory(prefix="taxiflow-version-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{download_uri.rstrip('/')}/artifacts/bundle", dst_path=tmp, tracking_uri=self.store.tracking_uri
                )
                return load_model_bundle(Path(local))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{self.model_name} v{version}: model files could not be loaded ({first})") from exc

    # --- moving aliases -------------------------------------------------------------------------

    def mark_challenger(self, version: str) -> None:
        self._retry(lambda: self.client.set_registered_model_alias(self.model_name, CHALLENGER, version), "setting the challenger alias")

    def promote(self, version: str, *, previous: str | None, reason: str, who: str | None = None) -> None:
        """Move `champion` to `version`, recording the previous champion, who, when and why on the version."""
        tags = {
            PREVIOUS_TAG: previous or "",
            "taxiflow.promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "taxiflow.promoted_by": who or current_user(),
            "taxiflow.promotion_reason": reason[:4000],
        }
        for key, value in tags.items():
            self._retry(lambda k=key, v=value: self.client.set_model_version_tag(self.model_name, version, k, v), "tagging the promotion")
        # Last: the alias is what serving follows, so it moves only once the record is written.
        self._retry(lambda: self.client.set_registered_model_alias(self.model_name, CHAMPION, version), "moving the champion alias")

    def release(self, version: str, previous: str | None) -> None:
        """Before an uncommitted version is deleted: if `champion` reached it, give it back to `previous`."""
        current = self.version_by_alias(CHAMPION)
        if current is None or str(current.version) != str(version):
            return
        if previous:
            self._retry(lambda: self.client.set_registered_model_alias(self.model_name, CHAMPION, previous), "restoring the champion alias")
        else:
            self._retry(lambda: self.client.delete_registered_model_alias(self.model_name, CHAMPION), "removing the champion alias")

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._retry(lambda k=key, v=value: self.client.set_model_version_tag(self.model_name, version, k, v), "tagging the version")

    def is_committed(self, version: ModelVersion) -> bool:
        return version.tags.get(STATE_TAG) == COMMITTED


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"
