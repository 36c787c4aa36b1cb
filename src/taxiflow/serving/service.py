"""`taxiflow serve`: the prediction service in one uvicorn process, following the registry's alias."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from taxiflow.settings import TaxiflowSettings


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    tracking_uri: str
    model_name: str
    alias: str
    poll_s: float
    max_rides: int
    max_body_bytes: int
    access_log: bool = False

    @classmethod
    def from_settings(cls, settings: TaxiflowSettings, *, access_log: bool = False) -> ServeOptions:
        return cls(
            host=settings.serve_host,
            port=settings.serve_port,
            tracking_uri=settings.resolved_tracking_uri(),
            model_name=settings.model_name,
            alias=settings.serve_alias,
            poll_s=settings.serve_poll_s,
            max_rides=settings.serve_max_rides,
            max_body_bytes=settings.serve_max_body_bytes,
            access_log=access_log,
        )


def keep_scikit_learn_out() -> None:
    """XGBoost imports scikit-learn when it is installed, only for its sklearn-style wrappers: ~1 s and
    ~130 MB the service never uses. An unimportable `sklearn` makes XGBoost skip them (its own fallback)."""
    if "xgboost" not in sys.modules and "sklearn" not in sys.modules:
        sys.modules["sklearn"] = None  # type: ignore[assignment]


def serve(options: ServeOptions, settings: TaxiflowSettings) -> None:
    keep_scikit_learn_out()
    import uvicorn

    from taxiflow.io.model_store import model_store_for
    from taxiflow.serving.app import create_app
    from taxiflow.serving.loaded_model import ModelHolder

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per registry poll otherwise
    holder = ModelHolder(model_store_for(options.tracking_uri, options.model_name), options.alias, options.poll_s)
    token = settings.serve_admin_token.get_secret_value() if settings.serve_admin_token else None
    app = create_app(holder, max_rides=options.max_rides, max_body_bytes=options.max_body_bytes, admin_token=token or None)
    logging.getLogger("taxiflow.serving").info(
        "serving %s@%s from %s on http://%s:%d (docs at /docs; admin reload %s)",
        options.model_name,
        options.alias,
        holder.store.shown_uri,
        options.host,
        options.port,
        "enabled" if token else "disabled",
    )
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        loop="uvloop",
        http="httptools",
        access_log=options.access_log,
        log_level="info",
        timeout_keep_alive=30,
    )
    uvicorn.Server(config).run()
