"""`python -m benchmarks.backfill --quick`: every scenario is measured and each backfill did what its mode says.

Also the benchmark's synthetic months: every real row, moved into the month the file is named for.
No assertion on any time: only that the runs happened, were measured and reported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks.backfill import DROPOFF, PICKUP, build_months
from tests.conftest import REPO
from tests.support.servers import base_env


def test_synthetic_months_are_real_rows_moved_into_the_named_month(tmp_path, tlc_dir):
    made = build_months(3, tmp_path, first="2022-01", source_dir=tlc_dir)
    assert [(m["month"], m["source"]) for m in made] == [
        ("2022-01", "green_tripdata_2021-01.parquet"),
        ("2022-02", "green_tripdata_2021-02.parquet"),
        ("2022-03", "green_tripdata_2023-01.parquet"),
    ]
    for m in made:
        source, month = pq.read_table(tlc_dir / m["source"]), pq.read_table(tmp_path / f"green_tripdata_{m['month']}.parquet")
        assert month.schema.equals(source.schema, check_metadata=False)  # same columns and types, row for row
        assert month.drop([PICKUP, DROPOFF]).equals(source.drop([PICKUP, DROPOFF]))
        assert pc.subtract(month[DROPOFF], month[PICKUP]).equals(pc.subtract(source[DROPOFF], source[PICKUP]))  # same durations
        assert m["rows"] == source.num_rows and m["pickups_in_month"] > 0.99
    assert (tmp_path / "taxi_zone_lookup.csv").resolve() == (tlc_dir / "taxi_zone_lookup.csv").resolve()
    # Deterministic, and kept once written: a second build leaves the files (and so their sha256 identities) as they are.
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.parquet")}
    build_months(3, tmp_path, first="2022-01", source_dir=tlc_dir)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.parquet")} == before


@pytest.mark.servers
def test_quick_backfill_benchmark_measures_cold_warm_up_to_date_and_growth(tmp_path, tlc_dir, prefect_api):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.backfill", "--quick", "--prefect-api", prefect_api, "--months-dir", str(tmp_path / "months"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=base_env(TAXIFLOW_TEST_DATA=str(tlc_dir)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    scenarios = results["scenarios"]
    assert set(scenarios) == {"cold", "warm", "up_to_date"}
    for name, status in {"cold": "trained", "warm": "trained", "up_to_date": "up to date"}.items():
        run = scenarios[name]
        assert (run["months"], run["pairs"], run["statuses"]) == (3, 2, {status: 2}), name
        assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_mb"] > 0, name
        assert run["s_per_pair"] == pytest.approx(run["wall_s"] / 2, rel=1e-12)
    cold, warm, fresh = scenarios["cold"], scenarios["warm"], scenarios["up_to_date"]
    # Cold prepares each of the 3 months once (the middle one's second use comes from the cache); warm prepares none.
    assert (cold["months_prepared_now"], cold["months_from_cache"]) == (3, 1)
    assert (warm["months_prepared_now"], warm["months_from_cache"]) == (0, 4)
    assert (fresh["months_prepared_now"], fresh["months_from_cache"]) == (0, 0)
    assert cold["prepared_cache_entries"] == warm["prepared_cache_entries"] == 3
    # Warm trained new versions; up to date returned them, training nothing.
    assert set(warm["versions"].values()).isdisjoint(cold["versions"].values())
    assert fresh["versions"] == warm["versions"] and fresh["prefect"]["child_count"] == 0
    assert cold["prefect"]["child_count"] == warm["prefect"]["child_count"] == 2

    assert results["growth"] == ["growth_2", "cold"]
    growth = results["growth_runs"]["growth_2"]
    assert (growth["months"], growth["pairs"], growth["statuses"]) == (2, 1, {"trained": 1}) and growth["wall_s"] > 0
    figures = results["figures"]
    assert figures["cold_over_warm"] == pytest.approx(cold["wall_s"] / warm["wall_s"], rel=1e-12)
    assert figures["cold_over_up_to_date"] == pytest.approx(cold["wall_s"] / fresh["wall_s"], rel=1e-12)
    assert figures["growth"]["time_linear"] is None  # two points: not judged
    # Only the machine's load (or someone editing core/ meanwhile) may be flagged; never what the backfills did.
    assert [p for p in results["problems"] if "disturbed" not in p and "was edited" not in p] == []

    text = (out / "results.md").read_text()
    assert "| cold | missing | new |" in text and "| up to date | missing | after warm |" in text and "## Growth: cold backfills" in text
    assert {p.name for p in (out / "logs").iterdir()} == {"cold.stderr", "warm.stderr", "up_to_date.stderr", "growth_2.stderr"}
