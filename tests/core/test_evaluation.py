"""Error breakdowns on a real month, checked against pandas groupby (or a plain loop) on the same numbers."""

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest

from taxiflow.core.errors import DataFileError, InvalidArgumentError
from taxiflow.core.evaluation import (
    DISTANCE_BAND_LABELS,
    DISTANCE_BANDS,
    UNKNOWN_BOROUGH,
    compare_by_distance_band,
    rmse_by_borough,
    rmse_by_distance_band,
    zone_boroughs_from_lookup,
)
from taxiflow.core.schema import DISTANCE, DROPOFF_ZONE, DURATION, PICKUP_ZONE

RTOL = 1e-12
EDGES = [0, 1, 2, 3, 5, 10, 20, np.inf]
LABELS = ["0-1 mi", "1-2 mi", "2-3 mi", "3-5 mi", "5-10 mi", "10-20 mi", "20+ mi"]


def _mean_by(train: pl.DataFrame, keys: list[str], target: pl.DataFrame) -> np.ndarray:
    """A model-free predictor: the training month's mean duration per key, else the overall mean."""
    means = train.group_by(keys).agg(pl.col(DURATION).mean().alias("pred"))
    joined = target.join(means, on=keys, how="left", maintain_order="left")
    return joined["pred"].fill_null(train[DURATION].mean()).to_numpy()


@pytest.fixture(scope="module")
def month(green_prepared):
    """Validation month 2023-02 with two predictors fitted on 2023-01 (per pickup zone, per zone pair)."""
    train, val = green_prepared("2023-01").frame, green_prepared("2023-02").frame
    pdf = val.to_pandas()
    pdf["pred_zone"] = _mean_by(train, [PICKUP_ZONE], val)
    pdf["pred_pair"] = _mean_by(train, [PICKUP_ZONE, DROPOFF_ZONE], val)
    return pdf


@pytest.fixture(scope="module")
def lookup(tlc_dir):
    # keep_default_na=False: zone 265's borough is the literal text "N/A", not a missing value.
    return pd.read_csv(tlc_dir / "taxi_zone_lookup.csv", keep_default_na=False)


def _reference(frame: pd.DataFrame, group: pd.Series, pred: str) -> pd.DataFrame:
    error = frame[pred] - frame[DURATION]
    parts = pd.DataFrame({"group": group, "sq": error**2, "abs": error.abs(), "y": frame[DURATION]})
    out = parts.groupby("group", observed=True).agg(trips=("sq", "size"), mse=("sq", "mean"), mae=("abs", "mean"), mean_minutes=("y", "mean"))
    out["rmse"] = np.sqrt(out["mse"])
    return out


def _bands(distance: pd.Series) -> pd.Series:
    return pd.cut(distance, bins=EDGES, labels=LABELS, right=False)


def test_band_labels_follow_the_edges():
    assert DISTANCE_BANDS == (0, 1, 2, 3, 5, 10, 20)
    assert DISTANCE_BAND_LABELS == tuple(LABELS)


def test_rmse_by_distance_band_matches_pandas_on_a_real_month(month):
    rows = rmse_by_distance_band(month[DISTANCE].to_numpy(), month[DURATION].to_numpy(), month["pred_zone"].to_numpy())
    ref = _reference(month, _bands(month[DISTANCE]), "pred_zone")
    assert [r["band"] for r in rows] == list(ref.index.astype(str)) == LABELS  # 2023-02 fills every band
    assert [r["trips"] for r in rows] == ref["trips"].tolist()
    assert sum(r["trips"] for r in rows) == len(month) == 62_574
    for key in ("rmse", "mae", "mean_minutes"):
        np.testing.assert_allclose([r[key] for r in rows], ref[key].to_numpy(), rtol=RTOL, atol=0, err_msg=key)
    assert all(type(r["trips"]) is int and type(r["rmse"]) is float for r in rows)


def test_empty_bands_are_omitted(month):
    short = month[month[DISTANCE] < 3]
    rows = rmse_by_distance_band(short[DISTANCE].to_numpy(), short[DURATION].to_numpy(), short["pred_zone"].to_numpy())
    ref = _reference(short, _bands(short[DISTANCE]), "pred_zone")
    assert [r["band"] for r in rows] == ["0-1 mi", "1-2 mi", "2-3 mi"]
    np.testing.assert_allclose([r["rmse"] for r in rows], ref["rmse"].to_numpy(), rtol=RTOL, atol=0)


def test_band_edges_belong_to_the_band_above():
    distance = np.array([0.0, 0.999, 1.0, 2.0, 2.999, 3.0, 5.0, 9.99, 10.0, 20.0, 150.0, 4.0])
    y_true = np.arange(1.0, 13.0)
    y_pred = y_true + np.linspace(-3, 3, 12)
    # Plain loop over the 7 bands: [lo, hi) membership, written out.
    upper = [*DISTANCE_BANDS[1:], math.inf]
    expected = []
    for label, lo, hi in zip(LABELS, DISTANCE_BANDS, upper, strict=True):
        members = [i for i, d in enumerate(distance) if lo <= d < hi]
        if members:
            errors = [y_pred[i] - y_true[i] for i in members]
            expected.append((label, len(members), math.sqrt(sum(e * e for e in errors) / len(members))))
    rows = rmse_by_distance_band(distance, y_true, y_pred)
    assert [(r["band"], r["trips"]) for r in rows] == [(b, n) for b, n, _ in expected]
    assert [(r["band"], r["trips"]) for r in rows][:4] == [("0-1 mi", 2), ("1-2 mi", 1), ("2-3 mi", 2), ("3-5 mi", 2)]
    np.testing.assert_allclose([r["rmse"] for r in rows], [e for _, _, e in expected], rtol=RTOL, atol=0)


def test_float32_predictions_are_scored_in_float64(month):
    pred32 = month["pred_pair"].to_numpy().astype(np.float32)
    rows = rmse_by_distance_band(month[DISTANCE].to_numpy(), month[DURATION].to_numpy(), pred32)
    frame = month.assign(pred32=pred32.astype(np.float64))
    ref = _reference(frame, _bands(frame[DISTANCE]), "pred32")
    np.testing.assert_allclose([r["rmse"] for r in rows], ref["rmse"].to_numpy(), rtol=RTOL, atol=0)


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (-0.5, "negative")])
def test_distance_without_a_band_is_refused(month, bad, what):
    distance = month[DISTANCE].to_numpy().copy()
    distance[[3, 7]] = bad
    with pytest.raises(InvalidArgumentError, match=r"distance: 2 value\(s\) are NaN or negative .*expected miles >= 0"):
        rmse_by_distance_band(distance, month[DURATION].to_numpy(), month["pred_zone"].to_numpy())


def test_mismatched_lengths_are_refused(month):
    with pytest.raises(InvalidArgumentError, match=r"y_pred: expected 62,574 values \(one per trip\), got 62,573"):
        rmse_by_distance_band(month[DISTANCE].to_numpy(), month[DURATION].to_numpy(), month["pred_zone"].to_numpy()[1:])


def test_zone_boroughs_from_the_real_lookup(lookup):
    zones = zone_boroughs_from_lookup(lookup["LocationID"].to_numpy(), lookup["Borough"].tolist(), source="lookup.csv")
    assert zones.names[0] == UNKNOWN_BOROUGH
    assert sorted(zones.names) == sorted(set(lookup["Borough"]))  # the lookup's own "Unknown" (264) shares code 0
    expected = dict(zip(lookup["LocationID"], lookup["Borough"], strict=True))
    got = dict(zip(range(1, 266), (zones.names[c] for c in zones.borough_codes(np.arange(1, 266))), strict=True))
    assert got == expected
    assert [zones.borough_of(z) for z in (0, 266, 70_000, -1)] == [UNKNOWN_BOROUGH] * 4


def test_rmse_by_borough_matches_pandas_with_unknown_zones(month, lookup):
    zones = zone_boroughs_from_lookup(lookup["LocationID"].to_numpy(), lookup["Borough"].tolist(), source="lookup.csv")
    frame = month.copy()
    # IDs the lookup doesn't list (prepared months hold only 1..265): they must count as Unknown.
    frame.loc[frame.index[:40], PICKUP_ZONE] = 0
    frame.loc[frame.index[40:70], PICKUP_ZONE] = 999
    borough = frame[PICKUP_ZONE].map(dict(zip(lookup["LocationID"], lookup["Borough"], strict=True))).fillna(UNKNOWN_BOROUGH)
    ref = _reference(frame, borough, "pred_zone").reset_index()
    ref = ref.sort_values(["trips", "group"], ascending=[False, True])

    rows = rmse_by_borough(frame[PICKUP_ZONE].to_numpy(), frame[DURATION].to_numpy(), frame["pred_zone"].to_numpy(), zones)
    assert [r["borough"] for r in rows] == ref["group"].tolist()
    assert [r["trips"] for r in rows] == ref["trips"].tolist()
    assert [r["trips"] for r in rows] == sorted((r["trips"] for r in rows), reverse=True)
    unknown = next(r for r in rows if r["borough"] == UNKNOWN_BOROUGH)
    assert unknown["trips"] == 70 + int((month[PICKUP_ZONE].iloc[70:] == 264).sum())
    np.testing.assert_allclose([r["rmse"] for r in rows], ref["rmse"].to_numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose([r["mae"] for r in rows], ref["mae"].to_numpy(), rtol=RTOL, atol=0)
    assert set(rows[0]) == {"borough", "trips", "rmse", "mae"}


def test_rmse_by_borough_refuses_non_integer_zones(month, lookup):
    zones = zone_boroughs_from_lookup(lookup["LocationID"].to_numpy(), lookup["Borough"].tolist(), source="lookup.csv")
    with pytest.raises(InvalidArgumentError, match=r"pickup_zone: expected integer zone IDs, got dtype float64"):
        rmse_by_borough(month[PICKUP_ZONE].to_numpy().astype(float), month[DURATION], month["pred_zone"], zones)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.iloc[:0], r"lookup\.csv: holds no zones \(0 rows\)"),
        (
            lambda f: f.assign(LocationID=f["LocationID"].replace(6, 5)),
            r"lookup\.csv: column 'LocationID' lists zone\(s\) 5 more than once; expected each zone once",
        ),
        (lambda f: f.assign(Borough=f["Borough"].replace("EWR", " ")), r"lookup\.csv: column 'Borough' is empty for LocationID 1; expected a borough name"),
        (lambda f: f.iloc[:200], r"lookup\.csv: no row for LocationID 201, 202, 203, 204, 205 \(\+60 more\) \(truncated\?\); expected every zone 1\.\.265"),
        (lambda f: f.assign(LocationID=f["LocationID"].replace(7, -7)), r"lookup\.csv: column 'LocationID' holds -7, expected zone IDs in 0\.\.65535"),
        (lambda f: f.assign(LocationID=f["LocationID"].astype(float)), r"lookup\.csv: column 'LocationID' holds float64 values, expected integer zone IDs"),
    ],
    ids=["empty", "duplicate", "blank-borough", "truncated", "negative", "float-ids"],
)
def test_untrustworthy_lookups_are_refused(lookup, edit, message):
    edited = edit(lookup)
    with pytest.raises(DataFileError, match=message):
        zone_boroughs_from_lookup(edited["LocationID"].to_numpy(), edited["Borough"].tolist(), source="lookup.csv")


def test_champion_vs_challenger_on_the_same_trips(month):
    comparison = compare_by_distance_band(
        month[DISTANCE].to_numpy(),
        month[DURATION].to_numpy(),
        {"champion v3": month["pred_zone"].to_numpy(), "challenger v4": month["pred_pair"].to_numpy().astype(np.float32)},
    )
    bands = _bands(month[DISTANCE])
    frame = month.assign(pred_pair=month["pred_pair"].astype(np.float32).astype(np.float64))
    champion, challenger = _reference(frame, bands, "pred_zone"), _reference(frame, bands, "pred_pair")
    assert comparison.bands == tuple(LABELS)
    assert list(comparison.trips) == champion["trips"].tolist()
    np.testing.assert_allclose(comparison.rmse["champion v3"], champion["rmse"].to_numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(comparison.rmse["challenger v4"], challenger["rmse"].to_numpy(), rtol=RTOL, atol=0)
    overall = {
        "champion v3": math.sqrt(((frame["pred_zone"] - frame[DURATION]) ** 2).mean()),
        "challenger v4": math.sqrt(((frame["pred_pair"] - frame[DURATION]) ** 2).mean()),
    }
    assert list(comparison.overall_rmse) == ["champion v3", "challenger v4"]  # the caller's order, for the legend
    np.testing.assert_allclose(list(comparison.overall_rmse.values()), list(overall.values()), rtol=RTOL, atol=0)
    # The zone pair predicts better than the pickup zone alone on a real month.
    assert overall["challenger v4"] < overall["champion v3"]
    rows = comparison.rows()
    assert rows[1] == {
        "band": "1-2 mi",
        "trips": int(champion["trips"].iloc[1]),
        "rmse champion v3": comparison.rmse["champion v3"][1],
        "rmse challenger v4": comparison.rmse["challenger v4"][1],
    }


def test_comparison_needs_models_and_trips(month):
    with pytest.raises(InvalidArgumentError, match=r"predictions: expected at least one model's predictions, got none"):
        compare_by_distance_band(month[DISTANCE].to_numpy(), month[DURATION].to_numpy(), {})
    with pytest.raises(InvalidArgumentError, match=r"distance: no trips to compare models on"):
        compare_by_distance_band(np.array([]), np.array([]), {"a": np.array([])})
    with pytest.raises(InvalidArgumentError, match=r"predictions\['b'\]: expected 62,574 values \(one per trip\), got 10"):
        compare_by_distance_band(month[DISTANCE].to_numpy(), month[DURATION].to_numpy(), {"a": month["pred_zone"].to_numpy(), "b": np.zeros(10)})
