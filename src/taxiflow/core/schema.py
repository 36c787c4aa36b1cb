"""TLC trip types mapped to one canonical trip schema, by declaration.

Each trip type lists, per canonical field, the source column names it has been published under
(first present wins). A new type or a renamed column is one entry here. Types are coerced after
reading (preparation) because the TLC's dtypes drift between months.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taxiflow.core.errors import DataFileError, InvalidArgumentError

TaxiType = Literal["green", "yellow", "fhv", "fhvhv"]

# Canonical column names used everywhere after reading.
PICKUP_AT = "pickup_at"
DROPOFF_AT = "dropoff_at"
PICKUP_ZONE = "pickup_zone"
DROPOFF_ZONE = "dropoff_zone"
DISTANCE = "distance"
DURATION = "duration_min"
CANONICAL_FIELDS = (PICKUP_AT, DROPOFF_AT, PICKUP_ZONE, DROPOFF_ZONE, DISTANCE)


@dataclass(frozen=True)
class TripLayout:
    """Where one trip type keeps each canonical field; a field it lacks is simply absent."""

    taxi: str
    columns: dict[str, tuple[str, ...]]

    def has(self, field: str) -> bool:
        return field in self.columns

    def resolve(self, canonical: list[str], available: list[str], *, source: str) -> dict[str, str]:
        """canonical name -> the source column present in this file; a clear error for what's missing."""
        lacking = [f for f in canonical if not self.has(f)]
        if lacking:
            raise DataFileError(f"{source}: {self.taxi} trips have no {', '.join(lacking)} column")
        present = set(available)
        mapping, missing = {}, []
        for field in canonical:
            found = next((name for name in self.columns[field] if name in present), None)
            if found is None:
                missing.append(" or ".join(self.columns[field]))
            else:
                mapping[field] = found
        if missing:
            raise DataFileError(f"{source}: missing column(s) {', '.join(missing)} expected in {self.taxi} trip files (found: {', '.join(available)})")
        return mapping


TRIP_LAYOUTS: dict[str, TripLayout] = {
    "green": TripLayout(
        "green",
        {
            PICKUP_AT: ("lpep_pickup_datetime",),
            DROPOFF_AT: ("lpep_dropoff_datetime",),
            PICKUP_ZONE: ("PULocationID",),
            DROPOFF_ZONE: ("DOLocationID",),
            DISTANCE: ("trip_distance",),
        },
    ),
    "yellow": TripLayout(
        "yellow",
        {
            PICKUP_AT: ("tpep_pickup_datetime",),
            DROPOFF_AT: ("tpep_dropoff_datetime",),
            PICKUP_ZONE: ("PULocationID",),
            DROPOFF_ZONE: ("DOLocationID",),
            DISTANCE: ("trip_distance",),
        },
    ),
    # FHV records carry no distance; their zone columns have been published in both spellings.
    "fhv": TripLayout(
        "fhv",
        {
            PICKUP_AT: ("pickup_datetime",),
            DROPOFF_AT: ("dropOff_datetime", "dropoff_datetime"),
            PICKUP_ZONE: ("PUlocationID", "PULocationID"),
            DROPOFF_ZONE: ("DOlocationID", "DOLocationID"),
        },
    ),
    "fhvhv": TripLayout(
        "fhvhv",
        {
            PICKUP_AT: ("pickup_datetime",),
            DROPOFF_AT: ("dropoff_datetime",),
            PICKUP_ZONE: ("PULocationID",),
            DROPOFF_ZONE: ("DOLocationID",),
            DISTANCE: ("trip_miles",),
        },
    ),
}
TAXI_TYPES: tuple[str, ...] = tuple(TRIP_LAYOUTS)


def layout_for(taxi: str) -> TripLayout:
    try:
        return TRIP_LAYOUTS[taxi]
    except KeyError:
        raise InvalidArgumentError(f"taxi: expected one of {', '.join(TAXI_TYPES)}, got {taxi!r}") from None


def check_fields_available(taxi: str, fields: list[str], *, what: str) -> None:
    """Refuse up front a request (e.g. a feature set) needing a field this trip type lacks."""
    lacking = [f for f in fields if not layout_for(taxi).has(f)]
    if lacking:
        raise InvalidArgumentError(f"{what}: {taxi} trips have no {', '.join(lacking)} column")


def tlc_file_name(taxi: str, month: object) -> str:
    """The TLC's published file name for a trip type and month (`green_tripdata_2023-01.parquet`)."""
    return f"{taxi}_tripdata_{month}.parquet"
