"""Where a model's errors are: RMSE/MAE by trip-distance band and by pickup borough, and two models side by side.

Pure and column-wise: rows are binned once (`np.digitize` or a gather through a zone -> borough
table) and every per-group sum is one `np.bincount`, so a million trips cost a few passes over
float64 arrays, never a Python loop over trips. Errors are computed in float64 whatever dtype the
predictions come in (XGBoost predicts float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from taxiflow.core.contracts import MAX_ZONE, MIN_ZONE
from taxiflow.core.errors import DataFileError, InvalidArgumentError

# Band lower edges in miles; each band is [edge, next edge), the last one open-ended.
DISTANCE_BANDS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
UNKNOWN_BOROUGH = "Unknown"
_MAX_ZONE_ID = (1 << 16) - 1  # bounds the zone -> borough table; real IDs are 1..265


def band_label(index: int) -> str:
    """`"1-2 mi"` for band 1; `"20+ mi"` for the last."""
    lo = DISTANCE_BANDS[index]
    if index + 1 == len(DISTANCE_BANDS):
        return f"{lo:g}+ mi"
    return f"{lo:g}-{DISTANCE_BANDS[index + 1]:g} mi"


DISTANCE_BAND_LABELS: tuple[str, ...] = tuple(band_label(i) for i in range(len(DISTANCE_BANDS)))


@dataclass(frozen=True, eq=False)
class ZoneBoroughs:
    """Zone ID -> borough as a dense code table: `codes[zone_id]` indexes `names`.

    `names[0]` is always "Unknown": zone IDs the lookup doesn't list get code 0, and so does the
    lookup's own "Unknown" zone (264), so they are reported together.
    """

    codes: np.ndarray  # int16, read-only, indexed by zone ID
    names: tuple[str, ...]

    def borough_codes(self, zone_ids: np.ndarray) -> np.ndarray:
        """Per row, the index into `names` of its zone's borough (0 = Unknown for unlisted IDs)."""
        zones = np.asarray(zone_ids)
        if not np.issubdtype(zones.dtype, np.integer):
            raise InvalidArgumentError(f"pickup_zone: expected integer zone IDs, got dtype {zones.dtype}")
        inside = (zones >= 0) & (zones < self.codes.shape[0])
        # Clip so the gather is safe for every row; rows outside the table are then reset to Unknown.
        codes = self.codes[np.clip(zones, 0, self.codes.shape[0] - 1)]
        codes[~inside] = 0
        return codes

    def borough_of(self, zone_id: int) -> str:
        return self.names[int(self.borough_codes(np.array([zone_id]))[0])]


def zone_boroughs_from_lookup(location_ids: Sequence[int] | np.ndarray, boroughs: Sequence[str | None], *, source: str) -> ZoneBoroughs:
    """Build the table from the lookup's `LocationID` and `Borough` columns, refusing a lookup that can't be trusted.

    `source` names the file in errors. Every zone ID trips may hold (MIN_ZONE..MAX_ZONE, the row
    contracts' range) must be listed with a borough: a lookup missing some is truncated or not the
    TLC's, and would silently report their trips as Unknown.
    """
    ids = np.asarray(location_ids)
    names = list(boroughs)
    if ids.shape != (len(names),):
        raise DataFileError(f"{source}: {ids.size} LocationID values but {len(names)} Borough values; expected one per row")
    if ids.size == 0:
        raise DataFileError(f"{source}: holds no zones (0 rows); expected one row per taxi zone")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataFileError(f"{source}: column 'LocationID' holds {ids.dtype} values, expected integer zone IDs")
    bad = ids[(ids < 0) | (ids > _MAX_ZONE_ID)]
    if bad.size:
        raise DataFileError(f"{source}: column 'LocationID' holds {_sample(bad)}, expected zone IDs in 0..{_MAX_ZONE_ID}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataFileError(f"{source}: column 'LocationID' lists zone(s) {_sample(unique[counts > 1])} more than once; expected each zone once")
    blank = [int(i) for i, b in zip(ids.tolist(), names, strict=True) if b is None or not str(b).strip()]
    if blank:
        raise DataFileError(f"{source}: column 'Borough' is empty for LocationID {_sample(np.array(blank))}; expected a borough name")
    missing = np.setdiff1d(np.arange(MIN_ZONE, MAX_ZONE + 1), ids)
    if missing.size:
        raise DataFileError(f"{source}: no row for LocationID {_sample(missing)} (truncated?); expected every zone {MIN_ZONE}..{MAX_ZONE} trips can hold")
    labels = [str(b).strip() for b in names]
    table_names = (UNKNOWN_BOROUGH, *sorted(set(labels) - {UNKNOWN_BOROUGH}))
    index = {name: code for code, name in enumerate(table_names)}
    codes = np.zeros(int(ids.max()) + 1, dtype=np.int16)
    codes[ids] = np.array([index[b] for b in labels], dtype=np.int16)  # one entry per zone, not per trip
    codes.flags.writeable = False
    return ZoneBoroughs(codes=codes, names=table_names)


def _sample(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (f" (+{values.size - limit} more)" if values.size > limit else "")


def _as_float64(name: str, values, n: int | None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InvalidArgumentError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise InvalidArgumentError(f"{name}: expected {n:,} values (one per trip), got {array.shape[0]:,}")
    return array


def distance_band_index(distance) -> np.ndarray:
    """Per trip, its band's index into DISTANCE_BANDS; refuses NaN or negative miles (no band holds them)."""
    miles = _as_float64("distance", distance, None)
    bad = ~(miles >= 0)  # NaN compares false
    if bad.any():
        raise InvalidArgumentError(f"distance: {int(bad.sum()):,} value(s) are NaN or negative (e.g. {miles[bad][0]}); expected miles >= 0")
    return np.digitize(miles, DISTANCE_BANDS[1:])


@dataclass(frozen=True)
class _GroupSums:
    trips: np.ndarray  # int64
    sse: np.ndarray
    sae: np.ndarray
    sum_true: np.ndarray


def _group_sums(groups: np.ndarray, n_groups: int, y_true: np.ndarray, y_pred: np.ndarray) -> _GroupSums:
    error = y_pred - y_true
    return _GroupSums(
        trips=np.bincount(groups, minlength=n_groups),
        sse=np.bincount(groups, weights=error * error, minlength=n_groups),
        sae=np.bincount(groups, weights=np.abs(error), minlength=n_groups),
        sum_true=np.bincount(groups, weights=y_true, minlength=n_groups),
    )


def rmse_by_distance_band(distance, y_true, y_pred) -> list[dict]:
    """Rows `{"band", "trips", "rmse", "mae", "mean_minutes"}` in distance order; empty bands omitted.

    `mean_minutes` is the band's mean actual duration: it puts the RMSE in proportion.
    """
    bands = distance_band_index(distance)
    truth = _as_float64("y_true", y_true, bands.shape[0])
    pred = _as_float64("y_pred", y_pred, bands.shape[0])
    sums = _group_sums(bands, len(DISTANCE_BANDS), truth, pred)
    rows = []
    for b in np.flatnonzero(sums.trips):  # at most 7 bands
        n = int(sums.trips[b])
        rows.append(
            {
                "band": DISTANCE_BAND_LABELS[b],
                "trips": n,
                "rmse": float(np.sqrt(sums.sse[b] / n)),
                "mae": float(sums.sae[b] / n),
                "mean_minutes": float(sums.sum_true[b] / n),
            }
        )
    return rows


def rmse_by_borough(pickup_zone, y_true, y_pred, zone_boroughs: ZoneBoroughs) -> list[dict]:
    """Rows `{"borough", "trips", "rmse", "mae"}` by pickup borough, most trips first; IDs the lookup lacks count as Unknown."""
    codes = zone_boroughs.borough_codes(pickup_zone)
    if codes.ndim != 1:
        raise InvalidArgumentError(f"pickup_zone: expected a 1-D array, got shape {codes.shape}")
    truth = _as_float64("y_true", y_true, codes.shape[0])
    pred = _as_float64("y_pred", y_pred, codes.shape[0])
    sums = _group_sums(codes, len(zone_boroughs.names), truth, pred)
    present = np.flatnonzero(sums.trips)
    # Most trips first; ties in name order, so the table is the same on every run.
    order = sorted(present.tolist(), key=lambda c: (-int(sums.trips[c]), zone_boroughs.names[c]))
    return [
        {
            "borough": zone_boroughs.names[c],
            "trips": int(sums.trips[c]),
            "rmse": float(np.sqrt(sums.sse[c] / sums.trips[c])),
            "mae": float(sums.sae[c] / sums.trips[c]),
        }
        for c in order
    ]


@dataclass(frozen=True, eq=False)
class BandComparison:
    """Several models' RMSE per distance band on the same trips (e.g. champion vs challenger)."""

    bands: tuple[str, ...]  # non-empty bands, in distance order
    trips: tuple[int, ...]
    rmse: dict[str, tuple[float, ...]]  # model label -> RMSE per band
    overall_rmse: dict[str, float]  # model label -> RMSE over all trips

    def rows(self) -> list[dict]:
        """One row per band: `{"band", "trips", "rmse <label>": ...}` for a table."""
        return [
            {"band": band, "trips": n, **{f"rmse {label}": values[i] for label, values in self.rmse.items()}}
            for i, (band, n) in enumerate(zip(self.bands, self.trips, strict=True))
        ]


def compare_by_distance_band(distance, y_true, predictions: Mapping[str, object]) -> BandComparison:
    """RMSE per distance band for each model in `predictions` (label -> predictions on the same trips)."""
    if not predictions:
        raise InvalidArgumentError("predictions: expected at least one model's predictions, got none")
    bands = distance_band_index(distance)
    n = bands.shape[0]
    if n == 0:
        raise InvalidArgumentError("distance: no trips to compare models on; expected at least one")
    truth = _as_float64("y_true", y_true, n)
    trips = np.bincount(bands, minlength=len(DISTANCE_BANDS))
    present = np.flatnonzero(trips)
    per_band: dict[str, tuple[float, ...]] = {}
    overall: dict[str, float] = {}
    for label, values in predictions.items():
        error = _as_float64(f"predictions[{label!r}]", values, n) - truth
        squared = error * error
        sse = np.bincount(bands, weights=squared, minlength=len(DISTANCE_BANDS))
        per_band[label] = tuple(float(v) for v in np.sqrt(sse[present] / trips[present]))
        overall[label] = float(np.sqrt(squared.mean()))
    return BandComparison(
        bands=tuple(DISTANCE_BAND_LABELS[b] for b in present),
        trips=tuple(int(t) for t in trips[present]),
        rmse=per_band,
        overall_rmse=overall,
    )
