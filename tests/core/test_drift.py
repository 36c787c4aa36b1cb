"""Drift: Evidently's default column tests, computed with scipy on value counts (core/drift.py)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from taxiflow.core.drift import DRIFT_COLUMNS, MonthProfile, ValueCounts, column_drift, compare_profiles, default_method, render_drift_report
from taxiflow.core.schema import DISTANCE, PICKUP_ZONE


def _profile(distance_miles, pickup, dropoff, prediction) -> MonthProfile:
    profile = MonthProfile()
    for name, sample in zip(DRIFT_COLUMNS, (distance_miles, pickup, dropoff, prediction), strict=True):
        profile.add(name, np.asarray(sample))
    return profile


def _month(prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = prepared.frame
    return frame[DISTANCE].to_numpy(), frame[PICKUP_ZONE].to_numpy(), frame["dropoff_zone"].to_numpy()


def test_two_halves_of_one_month_do_not_drift(green_prepared):
    distance_miles, pickup, dropoff = _month(green_prepared("2023-03"))
    halves = np.random.default_rng(7).permutation(distance_miles.size) % 2 == 0
    minutes = 4 * distance_miles + 5  # a stand-in prediction column
    reference, current = (_profile(distance_miles[h], pickup[h], dropoff[h], minutes[h]) for h in (halves, ~halves))

    report = compare_profiles(reference, current, reference_label="first half", current_label="second half")

    assert [(c.column, c.method) for c in report.columns] == [
        ("trip_distance", "wasserstein"),
        ("PULocationID", "jensenshannon"),
        ("DOLocationID", "jensenshannon"),
        ("prediction", "wasserstein"),
    ]
    assert not any(c.drifted for c in report.columns) and not report.dataset_drift
    # Sampling noise only: the numerical columns are far below the 0.1 threshold (categorical ones, with ~250 zones, less so).
    assert all(c.score < 0.02 for c in report.columns if c.kind == "numerical"), report.columns


def test_longer_distances_and_moved_pickups_drift(green_prepared):
    distance_miles, pickup, dropoff = _month(green_prepared("2023-01"))
    # 37 trips of over 100 miles (up to 120,098) make the std 585 miles: a normed distance would barely see a shift.
    plausible = distance_miles <= 100
    distance_miles, pickup, dropoff = distance_miles[plausible], pickup[plausible], dropoff[plausible]
    minutes = 4 * distance_miles + 5
    reference = _profile(distance_miles, pickup, dropoff, minutes)
    # Every trip 50% longer; a quarter of the pickups moved to JFK (zone 132): two of four columns move.
    moved = np.where(np.arange(pickup.size) % 4 == 0, 132, pickup)
    current = _profile(distance_miles * 1.5, moved, dropoff, minutes)

    report = compare_profiles(reference, current, reference_label="2023-01", current_label="shifted")
    by_column = {c.column: c for c in report.columns}
    assert by_column["trip_distance"].drifted and by_column["trip_distance"].score > 0.1
    assert by_column["trip_distance"].current_mean == pytest.approx(1.5 * by_column["trip_distance"].reference_mean)
    assert by_column["PULocationID"].drifted and by_column["PULocationID"].method == "jensenshannon"
    assert not by_column["DOLocationID"].drifted and not by_column["prediction"].drifted
    assert report.drifted_columns == ("trip_distance", "PULocationID") and report.share_drifted == 0.5
    assert report.dataset_drift  # 0.5 >= Evidently's default share, 0.5
    stricter = compare_profiles(reference, current, reference_label="2023-01", current_label="shifted", drift_share=0.75)
    assert not stricter.dataset_drift

    text = render_drift_report(report, heading="Drift", facts={"rides scored": "68,211"})
    assert "**Dataset drift**: 2 of 4 columns drifted (50% >= 50%): trip_distance, PULocationID." in text
    assert "| PULocationID | categorical | Jensen-Shannon distance |" in text and "- rides scored: 68,211" in text


def test_distances_equal_scipys_on_the_raw_columns_of_real_months(green_prepared):
    """The value-count computation gives what Evidently's calls give on the raw samples (2023-01 vs 2023-03)."""
    ref_distance, ref_pickup, _ = _month(green_prepared("2023-01"))
    cur_distance, cur_pickup, _ = _month(green_prepared("2023-03"))

    # Streamed in uneven batches, as scoring does: the counts are the whole month's.
    streamed = MonthProfile()
    for part in np.array_split(cur_distance, 7):
        streamed.add("trip_distance", part)
    whole = ValueCounts.of(cur_distance)
    np.testing.assert_array_equal(streamed.get("trip_distance").values, whole.values)
    np.testing.assert_array_equal(streamed.get("trip_distance").counts, whole.counts)

    wasserstein = column_drift("trip_distance", "numerical", ValueCounts.of(ref_distance), streamed.get("trip_distance"))
    expected = stats.wasserstein_distance(ref_distance, cur_distance) / max(np.std(ref_distance), 0.001)
    assert (wasserstein.method, wasserstein.threshold) == ("wasserstein", 0.1)
    assert wasserstein.score == pytest.approx(expected, rel=1e-12)
    assert wasserstein.score == pytest.approx(0.0090, abs=1e-4)

    # Evidently's categorical shares: value_counts over the union of the values seen, divided by the rows.
    ref, cur = pd.Series(ref_pickup), pd.Series(cur_pickup)
    keys = sorted(set(ref) | set(cur))
    ref_shares = ref.value_counts().reindex(keys, fill_value=0).to_numpy() / len(ref)
    cur_shares = cur.value_counts().reindex(keys, fill_value=0).to_numpy() / len(cur)
    jensenshannon = column_drift("PULocationID", "categorical", ValueCounts.of(ref_pickup), ValueCounts.of(cur_pickup))
    assert jensenshannon.method == "jensenshannon"
    assert jensenshannon.score == pytest.approx(distance.jensenshannon(ref_shares, cur_shares, base=2), rel=1e-12)
    assert not wasserstein.drifted and not jensenshannon.drifted


def test_small_references_use_p_values_as_evidently_does():
    rng = np.random.default_rng(3)
    reference, current = rng.normal(0, 1, 800), rng.normal(0.5, 1, 900)
    ks = column_drift("x", "numerical", ValueCounts.of(reference), ValueCounts.of(current))
    assert ks.method == "ks" and ks.score == pytest.approx(stats.ks_2samp(reference, current).pvalue, rel=1e-12)
    assert ks.drifted and ks.score <= 0.05

    zones_ref, zones_cur = rng.integers(1, 6, 500), rng.integers(1, 6, 600)
    chi = column_drift("zone", "categorical", ValueCounts.of(zones_ref), ValueCounts.of(zones_cur))
    counts_ref, counts_cur = np.bincount(zones_ref)[1:], np.bincount(zones_cur)[1:]
    assert chi.method == "chisquare"
    assert chi.score == pytest.approx(stats.chisquare(counts_cur, counts_ref * 600 / 500).pvalue, rel=1e-12)
    assert not chi.drifted  # same distribution

    flags = ValueCounts.of(np.array([0] * 300 + [1] * 200)), ValueCounts.of(np.array([0] * 100 + [1] * 400))
    assert default_method("categorical", *flags) == "z"
    assert column_drift("flag", "categorical", *flags).drifted
    # A numerical column with few values is tested as a categorical one (here: >1,000 rows, Jensen-Shannon).
    few = ValueCounts.of(np.repeat([1.0, 2.0, 3.0], 500)), ValueCounts.of(np.repeat([1.0, 2.0, 3.0], 400))
    assert default_method("numerical", *few) == "jensenshannon" and column_drift("passengers", "numerical", *few).score == 0.0


def test_missing_values_are_left_out_and_empty_columns_are_skipped():
    assert ValueCounts.of(np.array([1.0, np.nan, np.inf, 1.0, 2.0])).total == 3
    reference = _profile([1.0, 2.0] * 600, [1, 2] * 600, [3, 4] * 600, [10.0, 12.0] * 600)
    current = MonthProfile()
    for name in ("PULocationID", "DOLocationID", "prediction"):
        current.add(name, reference.get(name).sample())
    report = compare_profiles(reference, current, reference_label="r", current_label="c")
    assert report.skipped == ("trip_distance",) and len(report.columns) == 3 and not report.dataset_drift
