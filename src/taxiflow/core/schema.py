"""TLC trip types mapped to one canonical trip schema, by declaration.

Each trip type names the source columns that carry the canonical fields; a new type or a renamed
column is one entry here. Types are coerced after reading because the TLC's dtypes drift between
months (int32/int64/double zone IDs, null-typed columns, large strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaxiType = Literal["green", "yellow", "fhv", "fhvhv"]
TAXI_TYPES: tuple[str, ...] = ("green", "yellow", "fhv", "fhvhv")

# Canonical column names used everywhere after reading.
PICKUP_AT = "pickup_at"
DROPOFF_AT = "dropoff_at"
PICKUP_ZONE = "pickup_zone"
DROPOFF_ZONE = "dropoff_zone"
DISTANCE = "distance"
DURATION = "duration_min"


@dataclass(frozen=True)
class TripLayout:
    """Where one trip type keeps each canonical field (None: the type doesn't have it)."""

    taxi: str
    pickup_at: str
    dropoff_at: str
    pickup_zone: str
    dropoff_zone: str
    distance: str | None

    def source_columns(self, canonical: list[str]) -> dict[str, str]:
        """Map canonical name -> source column for the requested canonical fields."""
        mapping = {
            PICKUP_AT: self.pickup_at,
            DROPOFF_AT: self.dropoff_at,
            PICKUP_ZONE: self.pickup_zone,
            DROPOFF_ZONE: self.dropoff_zone,
            DISTANCE: self.distance,
        }
        return {name: mapping[name] for name in canonical if mapping[name] is not None}


TRIP_LAYOUTS: dict[str, TripLayout] = {
    "green": TripLayout("green", "lpep_pickup_datetime", "lpep_dropoff_datetime", "PULocationID", "DOLocationID", "trip_distance"),
    "yellow": TripLayout("yellow", "tpep_pickup_datetime", "tpep_dropoff_datetime", "PULocationID", "DOLocationID", "trip_distance"),
    "fhv": TripLayout("fhv", "pickup_datetime", "dropOff_datetime", "PUlocationID", "DOlocationID", None),
    "fhvhv": TripLayout("fhvhv", "pickup_datetime", "dropoff_datetime", "PULocationID", "DOLocationID", "trip_miles"),
}


def layout_for(taxi: str) -> TripLayout:
    from taxiflow.core.errors import InvalidArgumentError

    try:
        return TRIP_LAYOUTS[taxi]
    except KeyError:
        raise InvalidArgumentError(f"taxi: expected one of {', '.join(TAXI_TYPES)}, got {taxi!r}") from None


def tlc_file_name(taxi: str, month: object) -> str:
    """The TLC's published file name for a trip type and month (`green_tripdata_2023-01.parquet`)."""
    return f"{taxi}_tripdata_{month}.parquet"
