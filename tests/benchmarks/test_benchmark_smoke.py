"""`python -m benchmarks.run --quick`: every figure is there, and both pipelines train the same model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support.servers import base_env

STAGES = {"read", "prepare", "features", "train", "evaluate", "log"}


@pytest.mark.servers
def test_quick_benchmark_reports_every_stage_of_both_pipelines(tmp_path, tlc_dir, prefect_api):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--prefect-api", prefect_api, "--out", str(out)],
        cwd=REPO, env=base_env(TAXIFLOW_TEST_DATA=str(tlc_dir)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    pair = json.loads((out / "results.json").read_text())["pairs"]["real"]
    runs = pair["runs"]
    assert {"course", "taxiflow", "course_read_features", "taxiflow_read_features", "decode_floor", "train_floor", "flow_server", "cli_server"} <= set(runs)

    for pipeline in ("course", "taxiflow"):
        assert set(runs[pipeline]["stages"]) == STAGES
        assert set(runs[f"{pipeline}_read_features"]["stages"]) == {"read", "prepare", "features"}
    # Each total is its stages' sum, recomputed here (the order of the sum may differ: 1e-12 relative).
    for name, run in runs.items():
        if "stages" in run:
            assert run["total_s"] == pytest.approx(sum(run["stages"].values()), rel=1e-12), name
    # Rows and one-hot features from the shared data's README (green 2023-01 -> 2023-02).
    for pipeline in ("course", "taxiflow"):
        assert (runs[pipeline]["facts"]["rows_train"], runs[pipeline]["facts"]["rows_val"]) == (65_946, 62_574), pipeline
    taxiflow_facts = runs["taxiflow"]["facts"]
    assert runs["course"]["facts"]["n_features"] == taxiflow_facts["n_features"] + taxiflow_facts["n_features_pruned"] == 5_702
    # Peak RSS (the parent's wait4) can't be below the RSS the child itself sampled after its imports.
    for name in ("course", "taxiflow", "decode_floor", "train_floor", "flow_server"):
        assert runs[name]["peak_rss_mb"] >= runs[name]["rss_after_imports_mb"], name

    rmse = pair["figures"]["rmse"]
    # The course pipeline (every row, DictVectorizer's full vocabulary) and taxiflow (collapsed rows,
    # unsplittable columns dropped) grow the same trees; only float32 leaf sums taken in another order
    # differ (6e-10 in RMSE on this pair), far below 1e-5.
    assert rmse["taxiflow"] == pytest.approx(rmse["course"], rel=0, abs=1e-5)
    # benchmarks/taxiflow_direct.py must wire taxiflow's functions as the flow does: the same model, bit for bit.
    assert rmse["flow_server"] == rmse["taxiflow"], "the flow's wiring changed: update benchmarks/taxiflow_direct.py"
    assert rmse["cli_server"] == rmse["flow_server"]  # the CLI runs that same flow

    # The headline figures are the ratios of the measurements they are drawn from.
    figures = pair["figures"]
    assert figures["read_to_features"]["course_over_taxiflow"] == pytest.approx(
        runs["course_read_features"]["total_s"] / runs["taxiflow_read_features"]["total_s"], rel=1e-12
    )
    assert figures["time_to_model"]["course_over_taxiflow"] == pytest.approx(runs["course"]["total_s"] / runs["taxiflow"]["total_s"], rel=1e-12)
    assert figures["memory"]["course_over_taxiflow_cli"] == pytest.approx(runs["course"]["peak_rss_mb"] / runs["cli_server"]["peak_rss_mb"], rel=1e-12)

    # The report's total row shows those sums and their ratio, to the digits it prints.
    text = (out / "results.md").read_text()
    row = re.search(r"^\| \*\*total \(sum of stages\)\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)x\*\* \|$", text, re.M)
    assert row, text
    course_total, taxiflow_total = runs["course"]["total_s"], runs["taxiflow"]["total_s"]
    for printed, value in zip(row.groups(), (course_total, taxiflow_total, course_total / taxiflow_total), strict=True):
        decimals = len(printed.partition(".")[2])
        assert abs(float(printed) - value) <= 0.5 * 10**-decimals + 1e-9, (printed, value)
    png = (out / "stages.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
