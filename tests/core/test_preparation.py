import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiflow.core.errors import DataFileError, NoUsableRowsError
from taxiflow.core.months import Month
from taxiflow.core.preparation import prepare_rides, prepare_trips
from taxiflow.core.schema import DURATION

# Rows read / rows with 1 <= duration <= 60, from the shared data's README.
EXPECTED = {
    "2021-01": (76_518, 73_908),
    "2021-02": (64_572, 61_921),
    "2023-01": (68_211, 65_946),
    "2023-02": (64_809, 62_574),
    "2023-03": (72_044, 69_392),
    "2024-01": (56_551, 54_373),
}


@pytest.mark.parametrize("month", sorted(EXPECTED))
def test_every_real_green_month_despite_dtype_drift(green_prepared, month):
    prepared = green_prepared(month)
    assert (prepared.rows_read, prepared.rows_kept) == EXPECTED[month]
    duration = prepared.frame[DURATION]
    assert duration.min() >= 1 and duration.max() <= 60
    # Whatever the month stored (int64, int32 or double IDs), one schema comes out.
    assert {name: str(dtype) for name, dtype in prepared.frame.schema.items()} == {
        "pickup_zone": "Int32",
        "dropoff_zone": "Int32",
        "distance": "Float64",
        DURATION: "Float64",
    }


def _table(pickups, dropoffs, zones=(1, 2), zone_type=pa.int64(), distances=None):
    n = len(pickups)
    return pa.table(
        {
            "pickup_at": pa.array(pickups, pa.timestamp("us")),
            "dropoff_at": pa.array(dropoffs, pa.timestamp("us")),
            "pickup_zone": pa.array(zones[0] if isinstance(zones[0], list) else [zones[0]] * n, zone_type),
            "dropoff_zone": pa.array([zones[1]] * n, zone_type),
            "distance": pa.array(distances or [1.0] * n, pa.float64()),
        }
    )


def test_duration_bounds_are_inclusive():
    t0 = dt.datetime(2023, 1, 1, 12)
    minutes = [0.5, 1, 30, 60, 60.5, -5]
    table = _table([t0] * len(minutes), [t0 + dt.timedelta(minutes=m) for m in minutes])
    prepared = prepare_trips(table, source="t.parquet")
    assert prepared.frame[DURATION].to_list() == [1, 30, 60]
    assert prepared.rows_read == 6


def test_double_zone_ids_are_coerced():
    t0 = dt.datetime(2023, 1, 1, 12)
    prepared = prepare_trips(_table([t0], [t0 + dt.timedelta(minutes=5)], zones=(7.0, 8.0), zone_type=pa.float64()), source="t")
    assert prepared.frame["pickup_zone"].to_list() == [7] and prepared.frame["dropoff_zone"].to_list() == [8]
    assert str(prepared.frame["pickup_zone"].dtype) == str(prepared.frame["dropoff_zone"].dtype) == "Int32"


def test_string_zone_ids_are_refused_with_file_and_column():
    t0 = dt.datetime(2023, 1, 1, 12)
    table = _table([t0], [t0 + dt.timedelta(minutes=5)], zones=("7", "8"), zone_type=pa.string())
    with pytest.raises(DataFileError, match=r"^bad\.parquet: column 'pickup_zone' holds String, expected integer zone IDs$"):
        prepare_trips(table, source="bad.parquet")


def test_no_rows_left_names_the_file():
    t0 = dt.datetime(2023, 1, 1, 12)
    table = _table([t0, t0], [t0, t0 + dt.timedelta(hours=3)])
    with pytest.raises(
        NoUsableRowsError,
        match=r"^short\.parquet: no usable trips: all 2 rows failed checks: duration_out_of_range 2 \(duration_min: expected duration 1\.\.60 min\)$",
    ):
        prepare_trips(table, source="short.parquet")


def _rows_failing_each_contract():
    """Seven rows: fine, no pickup time, zone 0 and distance -1, zone 300, negative duration, no zone, 2 hours."""
    t0 = dt.datetime(2023, 1, 10, 12)
    ok = t0 + dt.timedelta(minutes=10)
    return _table(
        [t0, None, t0, t0, t0, t0, t0],
        [ok, ok, ok, ok, t0 - dt.timedelta(minutes=3), ok, t0 + dt.timedelta(hours=2)],
        zones=([5, 5, 0, 300, 5, None, 5], 7),
        distances=[1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0],
    )


def test_rows_failing_contracts_are_dropped_and_counted_by_first_reason():
    table = _rows_failing_each_contract()
    prepared = prepare_trips(table, source="t.parquet", month=Month(2023, 1))
    assert prepared.rows_kept == 1 and prepared.rows_read == 7
    assert prepared.dropped == {
        "pickup_at_null": 1,
        "pickup_zone_null": 1,
        "pickup_zone_out_of_range": 2,  # zone 0 (its negative distance is not counted twice) and zone 300
        "dropoff_before_pickup": 1,
        "duration_out_of_range": 1,
    }
    assert sum(prepared.dropped.values()) == prepared.rows_read - prepared.rows_kept


def test_pickup_window_is_opt_in(green_prepared, tlc_dir):
    from tests.core.conftest import read_green

    path = tlc_dir / "green_tripdata_2023-02.parquet"
    strict = prepare_trips(read_green(path), source=str(path), month=Month(2023, 2), month_window_days=1)
    # Reference, in plain numpy on the file's own columns: pickups outside 2023-01-31..2023-03-02
    # (February +- 1 day) and durations of 1..60 min. This month has no nulls, bad zones, negative
    # distances or reversed timestamps, so those two are the only reasons a row is dropped.
    raw = pq.read_table(path, columns=["lpep_pickup_datetime", "lpep_dropoff_datetime"])
    pickup, dropoff = (raw[c].to_numpy() for c in ("lpep_pickup_datetime", "lpep_dropoff_datetime"))
    outside = (pickup < np.datetime64("2023-01-31")) | (pickup >= np.datetime64("2023-03-02"))
    minutes = (dropoff - pickup) / np.timedelta64(1, "m")
    in_range = (minutes >= 1) & (minutes <= 60)
    # The TLC's stray dates (e.g. 2023-01-25 in February): 22 rows, 19 of which the duration rule would keep.
    assert (outside.sum(), (outside & in_range).sum()) == (22, 19)
    # Opt-in: without a window, the stray pickups are kept.
    assert green_prepared("2023-02").dropped == {"duration_out_of_range": int((~in_range).sum())}
    assert strict.dropped == {"pickup_outside_month": 22, "duration_out_of_range": int((~in_range & ~outside).sum())}
    assert strict.rows_kept == int((in_range & ~outside).sum()) == EXPECTED["2023-02"][1] - 19


def test_a_file_named_for_another_month_is_refused(tlc_dir):
    from tests.core.conftest import read_green

    path = tlc_dir / "green_tripdata_2023-02.parquet"
    message = f"{path}: named for 2023-05 but only 0.0% of its pickups fall in that month (most are in 2023-02); expected a file of 2023-05 trips"
    with pytest.raises(DataFileError, match="^" + re.escape(message) + "$"):
        prepare_trips(read_green(path), source=str(path), month=Month(2023, 5))


def test_fractional_zone_ids_are_refused():
    t0 = dt.datetime(2023, 1, 1, 12)
    with pytest.raises(DataFileError, match=r"^frac\.parquet: column 'pickup_zone' holds fractional values, expected integer zone IDs$"):
        prepare_trips(_table([t0], [t0 + dt.timedelta(minutes=5)], zones=(7.5, 8.0), zone_type=pa.float64()), source="frac.parquet")


def test_empty_file_is_refused():
    with pytest.raises(DataFileError, match=r"^e\.parquet: holds no trips \(0 rows\)$"):
        prepare_trips(_table([], []), source="e.parquet")


def test_scoring_keeps_every_ride_with_valid_inputs_and_only_usable_actuals():
    table = _rows_failing_each_contract()
    rides = prepare_rides(table, source="t.parquet", feature_columns=["pickup_zone", "dropoff_zone", "distance"], first_index=100)
    # Scored: the rides whose zones and distance pass the contracts, whatever their timestamps say.
    assert rides.frame["ride_index"].to_list() == [100, 101, 104, 106]
    assert rides.skipped == {"pickup_zone_null": 1, "pickup_zone_out_of_range": 2}
    # An actual duration only where training would have used it (timestamps present, 1..60 min).
    assert rides.frame[DURATION].to_list() == [10.0, None, None, None]


def test_scoring_a_real_month_scores_what_training_would_keep_and_more(tlc_dir, green_prepared):
    from tests.core.conftest import read_green

    rides = prepare_rides(read_green(tlc_dir / "green_tripdata_2023-03.parquet"), source="2023-03", feature_columns=["pickup_zone", "dropoff_zone", "distance"])
    assert (rides.rows_read, rides.rows_scorable, rides.frame[DURATION].drop_nulls().len()) == (72_044, 72_044, EXPECTED["2023-03"][1])
    kept = rides.frame.drop_nulls(DURATION).drop("ride_index")
    assert kept.equals(green_prepared("2023-03").frame.select(kept.columns))
