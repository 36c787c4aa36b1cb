"""benchmarks/postgres_read.py on the real month, once: both reads give the same rows, the figures are their ratio."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmarks.postgres_read import main


def test_postgres_read_benchmark_measures_the_same_rows_both_ways(tlc_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TAXIFLOW_TEST_DATA", str(tlc_dir))
    main(["--quick", "--runs", "2", "--out", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    month = results["months"]["real"]
    assert set(results["months"]) == {"real"} and month["rows"] == 68_211 and month["same_rows"] is True
    assert [len(month["seconds"][name]) for name in ("parquet", "postgres")] == [2, 2]
    assert month["postgres_median_s"] == statistics.median(month["seconds"]["postgres"])
    assert month["postgres_over_parquet"] == pytest.approx(month["postgres_median_s"] / month["parquet_median_s"], rel=1e-12)
    assert f"| real | 68,211 | {month['parquet_median_s']:.3f} | {month['postgres_median_s']:.3f} |" in (tmp_path / "results.md").read_text()
