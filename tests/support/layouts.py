"""yellow / fhv / fhvhv files built from real green rows, renamed to those types' published layouts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def green_as(taxi: str, green_file: Path, out: Path) -> Path:
    t = pq.read_table(green_file)
    if taxi == "yellow":
        t = t.drop_columns(["ehail_fee", "trip_type"])
        renames = {"lpep_pickup_datetime": "tpep_pickup_datetime", "lpep_dropoff_datetime": "tpep_dropoff_datetime"}
        t = t.rename_columns([renames.get(c, c) for c in t.column_names])
        t = t.append_column("Airport_fee", pa.nulls(t.num_rows, pa.float64()))  # spelled this way in some years
    elif taxi == "fhv":
        # FHV: no distance; lower-case 'l' in the zone columns; zone IDs as doubles with nulls.
        t = pa.table(
            {
                "dispatching_base_num": pa.array(["B00001"] * t.num_rows),
                "pickup_datetime": t["lpep_pickup_datetime"],
                "dropOff_datetime": t["lpep_dropoff_datetime"],
                "PUlocationID": pc.cast(t["PULocationID"], pa.float64()),
                "DOlocationID": pc.cast(t["DOLocationID"], pa.float64()),
                "SR_Flag": pa.nulls(t.num_rows, pa.int32()),
                "Affiliated_base_number": pa.array(["B00001"] * t.num_rows, pa.large_string()),
            }
        )
    elif taxi == "fhvhv":
        t = pa.table(
            {
                "hvfhs_license_num": pa.array(["HV0003"] * t.num_rows),
                "pickup_datetime": t["lpep_pickup_datetime"],
                "dropoff_datetime": t["lpep_dropoff_datetime"],
                "PULocationID": pc.cast(t["PULocationID"], pa.int64()),
                "DOLocationID": pc.cast(t["DOLocationID"], pa.int64()),
                "trip_miles": t["trip_distance"],
                "trip_time": pa.array([0] * t.num_rows, pa.int64()),
            }
        )
    else:
        raise ValueError(taxi)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out)
    return out
