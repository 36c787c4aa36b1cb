"""One frozen settings tree: embedded defaults, overridden by TAXIFLOW_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from taxiflow.core.errors import InvalidArgumentError

TLC_BASE_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data/"


class TaxiflowSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAXIFLOW_", frozen=True, extra="ignore")

    state_dir: Path = Field(Path(".taxiflow"), description="Local state: SQLite MLflow store, artifacts, logs")
    data_dir: Path = Field(Path("data"), description="Directory of TLC-named monthly parquet files")
    tlc_base_url: str = Field(TLC_BASE_URL, description="Where months missing from data_dir are downloaded from")
    download_timeout_s: float = Field(60.0, gt=0, description="Per-read timeout: a stalled download fails after this")
    download_retries: int = Field(4, ge=0, description="Retries after timeouts, resets, 5xx and truncated bodies")
    download_backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles per attempt, with jitter")
    s3_block: str = Field("taxi-data", description="prefect-aws S3Bucket block holding TLC-named months")
    postgres_url: SecretStr | None = Field(None, description="postgresql:// URL of the trips database (--source postgres, data load-sql); else the block below")
    postgres_secret_block: str = Field("taxi-postgres", description="Prefect Secret block holding the trips database URL when postgres_url is unset")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; else MLFLOW_TRACKING_URI; else SQLite")
    tracking_retry_s: float = Field(120.0, ge=0, description="How long registration retries a tracking store that is unreachable, restarting or busy")
    notify_targets: str = Field("", description="Notification targets, space-separated: webhook:<block> email:<block>:<to>[,<to>]")
    local_prefect_idle_s: float = Field(
        900.0,
        ge=0,
        description="Without PREFECT_API_URL or the stack: keep a local Prefect server this long after the last run (0: a temporary server per run)",
    )
    warm_runner_idle_s: float = Field(
        900.0, ge=0, description="Keep a warm runner (imports done) this long after the last train/score/backfill run (0: none; each run imports)"
    )
    warm_runner_dir: Path | None = Field(None, description="Where warm runners keep their sockets and records (default: <state_dir>/warm-runner)")
    tuning_storage: SecretStr | None = Field(None, description="Optuna storage URL of `taxiflow tune`'s studies (default: SQLite tuning.db in the state dir)")
    experiment_name: str = "nyc-taxi-experiment"
    model_name: str = "nyc-taxi-duration"

    # The local platform (`taxiflow stack up`): every service on 127.0.0.1.
    stack_host: str = "127.0.0.1"
    stack_prefect_port: int = Field(4200, ge=1, le=65535)
    stack_mlflow_port: int = Field(5000, ge=1, le=65535)
    stack_s3_port: int = Field(9000, ge=1, le=65535)
    stack_postgres_port: int = Field(5433, ge=1, le=65535)
    stack_bucket: str = "taxi-data"
    work_pool: str = "taxi-pool"
    stack_serve_port: int = Field(8000, ge=1, le=65535, description="`taxiflow stack up --serve`: the prediction service's port")

    # The prediction service (`taxiflow serve`).
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8000, ge=0, le=65535)
    serve_alias: str = Field("champion", description="The registry alias the service loads and follows")
    serve_poll_s: float = Field(10.0, gt=0, description="How often the service checks whether the alias moved")
    serve_max_rides: int = Field(10_000, ge=1, description="Most rides in one /predict request (422 beyond)")
    serve_max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest /predict body (413 beyond)")
    serve_admin_token: SecretStr | None = Field(None, description="Bearer token for POST /admin/reload; unset: the endpoint is disabled")

    def stack_dir(self) -> Path:
        return (self.state_dir / "stack").resolve()

    def resolved_tracking_uri(self) -> str:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    def cache_dir(self) -> Path:
        return (self.state_dir / "cache").resolve()

    def prepared_dir(self) -> Path:
        """Months' prepared trips, cached by identity (io/prepared_cache.py)."""
        return (self.state_dir / "prepared").resolve()

    def params_dir(self) -> Path:
        """Params files: `taxiflow tune` writes <taxi>-best.toml here, `train --params best` reads it."""
        return (self.state_dir / "params").resolve()

    def local_artifact_root(self) -> Path:
        """Where runs' artifacts go when tracking to the local SQLite store."""
        return (self.state_dir / "mlartifacts").resolve()


def load_settings() -> TaxiflowSettings:
    """The settings, or InvalidArgumentError naming each bad TAXIFLOW_* variable (not pydantic's traceback)."""
    try:
        return TaxiflowSettings()
    except ValidationError as exc:
        problems = "; ".join(f"TAXIFLOW_{'_'.join(str(p) for p in e['loc']).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
        raise InvalidArgumentError(f"bad setting in the environment: {problems}") from None
