"""The prediction service's HTTP face (FastAPI): predict, health, readiness, the model, an admin reload.

`/predict` reads the raw body itself: size and content type are checked before anything is parsed,
the JSON is parsed once by orjson, and every refusal is a 4xx naming the field and the ride index.
Only "no model loaded yet" (503) is a 5xx, and it is not about the input.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from taxiflow.serving.loaded_model import ModelHolder
from taxiflow.serving.rides import RequestError, RideParser

_JSON = "application/json"
_INLINE_RIDES = 32


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=_JSON)


def _error(status: int, message: str) -> Response:
    return _json({"detail": message}, status)


_ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}


def _responses(ok_schema: dict, *statuses: int) -> dict:
    described = {
        200: "OK",
        400: "Malformed JSON",
        401: "Missing or wrong token",
        404: "Endpoint disabled (no admin token configured)",
        413: "Body over the size limit",
        415: "Content type is not application/json",
        422: "A ride or field is invalid (the message names the ride index and the field)",
        503: "No model loaded yet",
    }
    out: dict = {"200": {"description": "OK", "content": {_JSON: {"schema": ok_schema}}}}
    for status in statuses:
        out[str(status)] = {"description": described[status], "content": {_JSON: {"schema": _ERROR_SCHEMA}}}
    return out


_ONE_PREDICTION = {
    "type": "object",
    "properties": {
        "model_version": {"type": "string"},
        "prediction": {"type": "number", "description": "minutes"},
        "ride_id": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
    },
    "required": ["model_version", "prediction"],
}
_MANY_PREDICTIONS = {
    "type": "object",
    "properties": {
        "model_version": {"type": "string"},
        "predictions": {"type": "array", "items": {"type": "number"}, "description": "minutes, in the rides' order"},
        "ride_ids": {"anyOf": [{"type": "array", "items": {}}, {"type": "null"}]},
    },
    "required": ["model_version", "predictions"],
}


def create_app(holder: ModelHolder, *, max_rides: int, max_body_bytes: int, admin_token: str | None, poll: bool = True) -> FastAPI:
    parser = RideParser(max_rides)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if poll:
            holder.start_polling()
        yield
        holder.stop_polling()

    app = FastAPI(
        title="taxiflow trip-duration service",
        description=f"Predicts NYC taxi trip durations (minutes) with the registered model under alias `{holder.alias}`.",
        version="1",
        lifespan=lifespan,
    )

    @app.get("/health", responses=_responses({"type": "object"}), summary="The process is up")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/ready", responses=_responses({"type": "object"}, 503), summary="A model is loaded")
    async def ready() -> Response:
        current = holder.current
        if current is None:
            refused = holder.refused
            why = f"v{refused['version']} refused: {refused['reason']}" if refused else f"waiting for a version under alias {holder.alias!r}"
            return _error(503, f"no model loaded yet ({why})")
        return _json({"ready": True, "model_version": current.ref.version})

    @app.get("/model", responses=_responses({"type": "object"}), summary="The model answering: version, run, RMSE, months, when loaded")
    async def model() -> Response:
        return _json(holder.describe())

    @app.post(
        "/predict",
        summary="Predict trip durations (minutes) for one ride or a list of rides",
        openapi_extra={"requestBody": {"required": True, "content": {_JSON: {"schema": _body_schema(parser)}}}},
        responses=_responses({"anyOf": [_ONE_PREDICTION, _MANY_PREDICTIONS]}, 400, 413, 415, 422, 503),
    )
    async def predict(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != _JSON:
            return _error(415, f"content type must be {_JSON}, got {content_type or 'none'}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body of {declared} bytes is over the limit of {max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # chunked bodies have no length: count as they arrive
            body += chunk
            if len(body) > max_body_bytes:
                return _error(413, f"body is over the limit of {max_body_bytes} bytes")
        try:
            rides = parser.parse(bytes(body))
        except RequestError as exc:
            return _error(exc.status, exc.message)
        current = holder.current  # read once: the whole request is answered by this version
        if current is None:
            return _error(503, "no model loaded yet")
        if len(rides) > _INLINE_RIDES:
            # XGBoost releases the GIL: a large batch predicts on a worker thread, so concurrent
            # batches use both cores while the event loop keeps answering small requests.
            minutes = await run_in_threadpool(current.predict, rides)
        else:
            minutes = current.predict(rides)  # ~0.3 ms: a thread hop would cost more than it frees
        if rides.single:
            one: dict[str, Any] = {"model_version": current.ref.version, "prediction": float(minutes[0])}
            if rides.ride_ids is not None:
                one["ride_id"] = rides.ride_ids[0]
            return _json(one)
        many: dict[str, Any] = {"model_version": current.ref.version, "predictions": np.asarray(minutes)}
        if rides.ride_ids is not None:
            many["ride_ids"] = rides.ride_ids
        return _json(many)

    @app.post("/admin/reload", responses=_responses({"type": "object"}, 401, 404), summary="Follow the alias now (needs the admin token)")
    async def reload(request: Request) -> Response:
        if not admin_token:
            return _error(404, "admin endpoint disabled: no admin token configured (TAXIFLOW_SERVE_ADMIN_TOKEN)")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            return _error(401, "missing or wrong admin token (Authorization: Bearer <token>)")
        outcome = await run_in_threadpool(holder.refresh, force=True)
        return _json({"outcome": outcome} | holder.describe())

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(parser.json_schema()["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _body_schema(parser: RideParser) -> dict:
    schema = dict(parser.json_schema())
    schema.pop("$defs")
    return schema
