"""`python -m benchmarks.run --quick`: every figure is there, and both pipelines train the same model.

Also the non-repeating pair's transform (benchmarks/make_data.py), on a small table.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.make_data import JITTER, jitter_distance
from tests.conftest import REPO
from tests.support.servers import base_env

STAGES = {"read", "prepare", "features", "train", "evaluate", "log"}


@pytest.mark.servers
def test_quick_benchmark_reports_every_stage_of_both_pipelines(tmp_path, tlc_dir, prefect_api):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--prefect-api", prefect_api, "--out", str(out)],
        cwd=REPO, env=base_env(TAXIFLOW_TEST_DATA=str(tlc_dir)), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    pair = results["pairs"]["real"]
    runs = pair["runs"]
    assert {
        "course", "taxiflow", "course_read_features", "taxiflow_read_features", "decode_floor", "train_floor", "flow_server", "cli_server",
        "cli_local_first", "cli_local",
    } <= set(runs)  # fmt: skip

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
    assert rmse["cli_local"] == rmse["cli_local_first"] == rmse["flow_server"]  # whichever server it reports to

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
    # The local Prefect server: started by the first run only, reused by the later one, stopped at the end.
    assert runs["cli_local_first"]["facts"]["started_local_server"] is True
    assert runs["cli_local"]["facts"]["started_local_server"] is False
    server = pair["local_server"]
    assert server is not None and server["peak_rss_mb"] == pytest.approx(sum(p["peak_rss_mb"] for p in server["processes"]), rel=1e-12)
    assert any("prefect server start" in p["cmd"] for p in server["processes"])
    # The warm runner: started by the first run, every later run (stack up or not) ran in it, stopped with the local server.
    assert [runs[n]["facts"]["in_warm_runner"] for n in ("cli_local_first", "cli_server", "cli_local")] == [False, True, True]
    for name in ("cli_server", "cli_local"):  # its peak is the run's (the forked child's, with what it inherits), not the caller's
        assert runs[name]["peak_rss_mb"] > runs[name]["caller_peak_rss_mb"], runs[name]
    runner = pair["warm_runner"]
    assert runner is not None and any("taxiflow.platform.warm_runner" in p["cmd"] for p in runner["processes"])
    assert runs["cli_local"]["peak_rss_mb"] >= runner["rss_mb"] * 0.5  # a run inherits the runner's imports
    shutdown = results["local_server_shutdown"]
    assert shutdown["server_pid"] == server["pid"] and shutdown["runner_pid"] == runner["pid"] and shutdown["processes_left"] == [], shutdown
    assert "warm runner stopped" in shutdown["stack_down_output"]

    # Fixed cost = whole process - the run's own flow time; end to end = course / `taxiflow train` (local server), same run.
    fixed = figures["fixed_cost"]
    assert set(fixed) == {"stack", "local", "local_first"}  # the old mode's runs are left out of --quick
    for mode, name in (("stack", "cli_server"), ("local", "cli_local"), ("local_first", "cli_local_first")):
        run = runs[name]
        assert fixed[mode]["fixed_s"] == pytest.approx(run["wall_s"] - run["facts"]["flow_s"], rel=1e-12), mode
        assert fixed[mode]["fixed_s"] == pytest.approx(run["facts"]["fixed_s"], rel=1e-12), mode
        assert 0 < fixed[mode]["flow_s"] < fixed[mode]["wall_s"], mode
    e2e = figures["end_to_end"]
    assert e2e["course_over_taxiflow"] == pytest.approx(runs["course"]["wall_s"] / runs["cli_local"]["wall_s"], rel=1e-12)
    assert e2e["taxiflow_over_course_peak_rss"] == pytest.approx(runs["cli_local"]["peak_rss_mb"] / runs["course"]["peak_rss_mb"], rel=1e-12)
    assert e2e["taxiflow_fixed_s"] == fixed["local"]["fixed_s"]
    assert e2e["rmse_diff"] == pytest.approx(rmse["cli_local"] - rmse["course"], abs=1e-12) and abs(e2e["rmse_diff"]) < 1e-5
    assert e2e["local_server_peak_rss_mb"] == server["peak_rss_mb"]
    for heading in ("## End to end:", "## Fixed cost of `taxiflow train`"):
        assert heading in text, heading

    png = (out / "stages.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_non_repeating_pair_jitters_only_trip_distance_within_20_percent_to_the_hundredth():
    schema = pa.schema([pa.field("VendorID", pa.int64()), pa.field("trip_distance", pa.float64())], metadata={b"pandas": b"{}"})
    distance = np.array([0.0, 1.0, 2.5, 10.37, 3.0] * 2_000)
    table = pa.table({"VendorID": np.arange(distance.size), "trip_distance": distance}, schema=schema)

    jittered = jitter_distance(table, [1, 2])

    assert jittered.schema.equals(table.schema, check_metadata=True)
    assert jittered.column("VendorID").equals(table.column("VendorID"))
    new = jittered.column("trip_distance").to_numpy()
    np.testing.assert_array_equal(new, np.round(new, 2))  # to the hundredth of a mile
    # Within the factor's range of the original, up to the rounding (half a hundredth).
    assert np.all(new >= distance * JITTER[0] - 0.005) and np.all(new <= distance * JITTER[1] + 0.005)
    assert len(np.unique(new[distance == 10.37])) > 100  # repeated rows become distinct inputs
    assert jittered.equals(jitter_distance(table, [1, 2]))  # deterministic for a seed
    assert not jittered.equals(jitter_distance(table, [1, 3]))
