"""`python -m benchmarks.run --quick`: every figure is there, and both pipelines train the same model."""

from __future__ import annotations

import json
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

    for pipeline in ("course", "taxiflow"):
        assert set(runs[pipeline]["stages"]) == STAGES
        assert set(runs[f"{pipeline}_read_features"]["stages"]) == {"read", "prepare", "features"}
        assert all(seconds > 0 for seconds in runs[pipeline]["stages"].values())
    assert runs["course"]["facts"]["rows_train"] == runs["taxiflow"]["facts"]["rows_train"] == 65_946
    taxiflow_facts = runs["taxiflow"]["facts"]
    assert runs["course"]["facts"]["n_features"] == taxiflow_facts["n_features"] + taxiflow_facts["n_features_pruned"] == 5_702
    for name in ("decode_floor", "train_floor", "flow_server", "cli_server"):
        assert runs[name]["wall_s"] > 0 and runs[name]["peak_rss_mb"] > 0, name

    rmse = pair["figures"]["rmse"]
    assert rmse["taxiflow"] == pytest.approx(rmse["course"], abs=0.02)
    # benchmarks/taxiflow_direct.py must wire taxiflow's functions as the flow does.
    assert rmse["flow_server"] == pytest.approx(rmse["taxiflow"], abs=1e-3), "the flow's wiring changed: update benchmarks/taxiflow_direct.py"
    assert rmse["cli_server"] == pytest.approx(rmse["flow_server"], abs=1e-6)

    figures = pair["figures"]
    assert figures["read_to_features"]["course_over_taxiflow"] > 0
    assert figures["memory"]["course_over_taxiflow_cli"] > 0
    assert "| **total (sum of stages)** |" in (out / "results.md").read_text()
    assert (out / "stages.png").stat().st_size > 10_000
