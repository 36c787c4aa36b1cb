"""What `/predict` accepts, parsed without a server: columns out, or a 4xx naming the ride and the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taxiflow.serving.rides import RequestError, RideParser

PARSER = RideParser(max_rides=3)
RIDE = {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 2.5}


def test_one_ride_and_a_list_become_columns():
    one = PARSER.parse(json.dumps(RIDE | {"ride_id": "r-1", "pickup_datetime": "2023-03-01T08:15:00Z"}).encode())
    assert one.single and one.ride_ids == ["r-1"]
    assert (one.pickup.tolist(), one.dropoff.tolist(), one.distance.tolist()) == ([74], [75], [2.5])
    many = PARSER.parse(json.dumps([RIDE, RIDE | {"PULocationID": 1.0, "ride_id": 7}, RIDE | {"trip_distance": 0}]).encode())
    assert not many.single and len(many) == 3 and many.ride_ids == [None, 7, None]
    assert many.pickup.dtype == np.int32 and many.pickup.tolist() == [74, 1, 74] and many.distance.tolist() == [2.5, 2.5, 0.0]
    assert PARSER.parse(json.dumps([RIDE, RIDE]).encode()).ride_ids is None  # no ride carries an id: none echoed


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([RIDE, RIDE | {"trip_distance": -1}], 422, "ride 1: trip_distance: Input should be greater than or equal to 0"),
        ([RIDE, RIDE, {"PULocationID": 74, "DOLocationID": 75}], 422, "ride 2: trip_distance: Field required"),
        (RIDE | {"DOLocationID": True}, 422, "DOLocationID: Input should be a valid number"),
        (RIDE | {"trip_distance": 1e6}, 422, "trip_distance: Input should be less than or equal to 10000"),
        (RIDE | {"ride_id": 0.5}, 422, "ride_id"),
        (RIDE | {"ride_id": 2**70}, 422, "ride_id"),
        (RIDE | {"pickup_datetime": 0}, 422, "pickup_datetime"),
        ([RIDE] * 4, 422, "at most 3 items"),
        ([], 422, "at least 1 item"),
        (3, 422, "got a JSON int"),
    ],
)
def test_bad_rides_name_the_ride_and_the_field(body, status, message):
    with pytest.raises(RequestError) as caught:
        PARSER.parse(json.dumps(body).encode())
    assert caught.value.status == status and message in caught.value.message, caught.value.message


def test_malformed_json_is_a_400():
    with pytest.raises(RequestError) as caught:
        PARSER.parse(b'{"PULocationID": 74,')
    assert caught.value.status == 400 and "not valid JSON" in caught.value.message


def test_the_body_schema_names_the_limits():
    schema = PARSER.json_schema()
    ride = schema["$defs"]["Ride"]
    assert set(ride["required"]) == {"PULocationID", "DOLocationID", "trip_distance"}
    assert ride["properties"]["PULocationID"]["maximum"] == 265 and ride["properties"]["trip_distance"]["minimum"] == 0
    assert schema["anyOf"][1]["maxItems"] == 3 and schema["anyOf"][1]["minItems"] == 1
