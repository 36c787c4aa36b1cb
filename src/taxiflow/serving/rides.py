"""What `POST /predict` accepts: one ride or a list of rides, checked field by field, returned as columns.

pydantic-core parses and checks the body in one compiled pass (JSON mode: JSON's types are the
schema's); the checked rides become columns in polars' Rust loop. A bad ride is named by its index
and its field.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

import numpy as np
import orjson
import polars as pl
from pydantic import AfterValidator, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

# TLC zone IDs (taxi_zone_lookup.csv): 1..263 are zones, 264/265 "Unknown"/"Outside of NYC".
MIN_ZONE, MAX_ZONE = 1, 265
MAX_DISTANCE_MILES = 10_000.0

# A JSON number that is whole (JSON Schema counts 16.0 as an integer); strings and booleans are refused.
Zone = Annotated[float, Field(strict=True, ge=MIN_ZONE, le=MAX_ZONE, multiple_of=1)]


def _whole(value: float) -> float:
    # pydantic's multiple_of has a tolerance that lets 2.6e-42 through; ride IDs must be whole.
    if not value.is_integer():
        raise ValueError("a numeric ride_id must be a whole number")
    return value


# Echoed back as sent: a short string or a 64-bit integer (what JSON encoders can write back); a whole
# number written as 12.0 (an integer to JSON Schema) comes back as 12.0.
RideId = (
    Annotated[str, StringConstraints(max_length=128)]
    | Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, Field(strict=True, ge=-(2**53), le=2**53, multiple_of=1), AfterValidator(_whole)]
)


class Ride(TypedDict):
    """One ride, in the TLC's column names (as the course's served model took them)."""

    PULocationID: Zone
    DOLocationID: Zone
    # strict: a JSON number only ("2.5" or true is refused). Bounded: XGBoost computes in float32, where
    # a huge distance becomes inf; no taxi ride is longer than the bound.
    trip_distance: Annotated[float, Field(strict=True, ge=0, le=MAX_DISTANCE_MILES, allow_inf_nan=False, description="miles")]
    pickup_datetime: NotRequired[Annotated[dt.datetime, Field(strict=True)]]
    ride_id: NotRequired[RideId]


class RequestError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Rides:
    pickup: np.ndarray
    dropoff: np.ndarray
    distance: np.ndarray
    ride_ids: list | None  # as sent, in order; None when no ride carries one
    single: bool  # the body was one ride (answered with one prediction), not a list

    def __len__(self) -> int:
        return len(self.pickup)


_SCHEMA = {"PULocationID": pl.Int32, "DOLocationID": pl.Int32, "trip_distance": pl.Float64}
_ONE = TypeAdapter(Ride)


class RideParser:
    def __init__(self, max_rides: int) -> None:
        self.max_rides = max_rides
        self._many = TypeAdapter(Annotated[list[Ride], Field(min_length=1, max_length=max_rides)])

    def json_schema(self) -> dict[str, Any]:
        """The body's schema (OpenAPI 3.1 / JSON Schema), with its definitions inline under `$defs`."""
        one = _ONE.json_schema(ref_template="#/components/schemas/{model}")
        many = {"type": "array", "items": {"$ref": "#/components/schemas/Ride"}, "minItems": 1, "maxItems": self.max_rides}
        return {"anyOf": [{"$ref": "#/components/schemas/Ride"}, many], "title": "One ride or a list of rides"} | {"$defs": {"Ride": one}}

    def parse(self, body: bytes) -> Rides:
        first = body.lstrip()[:1]
        if first == b"{":
            rides, single = [self._check(_ONE, body, single=True)], True
        elif first == b"[":
            rides, single = self._check(self._many, body, single=False), False
        else:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestError(400, f"body is not valid JSON: {exc}") from None
            raise RequestError(422, f"body must be a ride (JSON object) or a list of rides, got a JSON {type(data).__name__}")
        frame = pl.from_dicts(rides, schema=_SCHEMA)
        if single:
            ride_ids = [rides[0]["ride_id"]] if "ride_id" in rides[0] else None
        else:
            ids = pl.from_dicts(rides, schema={"ride_id": pl.Object})["ride_id"]
            ride_ids = ids.to_list() if ids.null_count() < len(ids) else None
        return Rides(
            pickup=frame["PULocationID"].to_numpy(),
            dropoff=frame["DOLocationID"].to_numpy(),
            distance=frame["trip_distance"].to_numpy(),
            ride_ids=ride_ids,
            single=single,
        )

    @staticmethod
    def _check(adapter: TypeAdapter, body: bytes, *, single: bool) -> Any:
        # JSON mode: pydantic-core parses and checks in one pass, and JSON's types are the schema's.
        try:
            return adapter.validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if errors and errors[0]["type"] == "json_invalid":
                raise RequestError(400, f"body is not valid JSON: {errors[0]['msg']}") from None
            raise RequestError(422, describe_errors(errors, single=single)) from None


def describe_errors(errors: list[Any], *, single: bool, limit: int = 5) -> str:
    """pydantic's errors as one line per problem: "ride 3: trip_distance: Input should be ..."."""
    lines = []
    for error in errors[:limit]:
        loc = list(error["loc"])
        where = ""
        if not single and loc and isinstance(loc[0], int):
            where = f"ride {loc.pop(0)}: "
        field = ".".join(str(p) for p in loc if not str(p).startswith(("int", "str", "float", "constrained", "function")))
        lines.append(f"{where}{field + ': ' if field else ''}{error['msg']}")
    more = len(errors) - limit
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")
