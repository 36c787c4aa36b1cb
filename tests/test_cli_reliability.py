"""Failing early and never losing finished work (issue 17), through the real command and real servers.

Each test was seen to fail against the code before this change (see the closing note of issue 17).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import registered_versions, stop_local_prefect
from tests.support.fault_proxy import Rule, fault_proxy, mlflow_error
from tests.support.servers import VENV_BIN, base_env, mlflow_server

TRAIN = ("train", "--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02")  # linear: the fit is quick


def _runs(tracking_uri: str, experiment: str = "nyc-taxi-experiment"):
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id])


def _flow_run_state(prefect_api: str, flow_run_id: str) -> str:
    return httpx.get(f"{prefect_api}/flow_runs/{flow_run_id}").json()["state"]["type"]


@pytest.mark.parametrize("idle_s", ["900", "0"], ids=["local-server", "temporary-servers"])
def test_two_concurrent_first_runs_on_a_fresh_state_dir_both_register(tlc_dir, tmp_path, idle_s):
    """No MLflow database and no Prefect database yet: both runs create them at once, both register.

    Whether the runs share the local Prefect server (one starts it) or each start Prefect's temporary
    server (TAXIFLOW_LOCAL_PREFECT_IDLE_S=0: both migrate the new database, under a lock).
    """
    env = base_env(TAXIFLOW_STATE_DIR=str(tmp_path / "state"), PREFECT_HOME=str(tmp_path / "prefect-home"), TAXIFLOW_LOCAL_PREFECT_IDLE_S=idle_s)
    # --retrain: the two runs are identical, and one that starts after the other committed would return it, cached.
    cmd = [str(VENV_BIN / "taxiflow"), *TRAIN, "--data-dir", str(tlc_dir), "--retrain", "--json"]
    try:
        runs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [run.communicate(timeout=600) for run in runs]
    finally:
        stop_local_prefect(tmp_path / "state")
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr[-3000:]
    assert sum("starting a local Prefect server" in stderr for _, stderr in outputs) == (1 if idle_s != "0" else 0)
    versions = sorted(registered_versions(tmp_path / "state"))
    assert versions == ["1", "2"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    for version in versions:
        assert client.get_model_version("nyc-taxi-duration", version).tags["taxiflow.state"] == "committed"


def test_an_unreachable_tracking_server_fails_before_any_data_is_read(run_taxiflow, tlc_dir, state_dir):
    # A URI carrying a password: the message names the server, masked.
    result = run_taxiflow(*TRAIN, "--data-dir", str(tlc_dir), "--tracking-uri", "http://ci:pa55word@127.0.0.1:9/", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "taxiflow: error: MLflow tracking server http://ci:***@127.0.0.1:9/ is not reachable: nothing answers there (connection refused)"
    )
    assert "pa55word" not in result.stderr + result.stdout
    # Refused before Prefect started: no flow run, no month read, no fit.
    for stage in ("get-green", "prepare-", "fit_model", "Flow run"):
        assert stage not in result.stderr


def test_an_unusable_sqlite_location_fails_before_any_data_is_read(run_taxiflow, tlc_dir, tmp_path):
    # The store's directory is a file (a typo'd path): not writable whoever runs it, root included.
    not_a_directory = tmp_path / "notes.txt"
    not_a_directory.write_text("not a directory")
    result = run_taxiflow(*TRAIN, "--data-dir", str(tlc_dir), "--tracking-uri", f"sqlite:///{not_a_directory / 'mlflow.db'}", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"taxiflow: error: MLflow tracking store sqlite:///{not_a_directory / 'mlflow.db'}: {not_a_directory} is not a writable directory (File exists)"
    )
    assert "Flow run" not in result.stderr


def test_an_invalid_model_name_fails_before_any_data_is_read(run_taxiflow, tlc_dir, state_dir):
    result = run_taxiflow(*TRAIN, "--data-dir", str(tlc_dir), "--model-name", "team/duration", timeout=120)
    assert result.returncode == 1
    assert (
        "taxiflow: error: model name 'team/duration' is not valid in MLflow: Invalid model name 'team/duration'. Names cannot contain '/' or ':'."
        in result.stderr
    )
    assert "Flow run" not in result.stderr


@pytest.mark.parametrize(
    "failing_step, rule",
    [
        ("creating the version", Rule("POST", "/model-versions/create", mlflow_error(400, "injected: registry refuses the version"))),
        # The version exists by then: the failure must delete it.
        ("committing the version", Rule("POST", "/model-versions/set-tag", mlflow_error(400, "injected: registry refuses the tag"))),
    ],
    ids=["at-create", "at-commit"],
)
def test_a_failure_at_registration_leaves_no_version_and_a_failed_run(run_taxiflow, tlc_dir, tmp_path, prefect_api, failing_step, rule):
    with mlflow_server(tmp_path / "mlflow") as server, fault_proxy(server, [rule]) as (proxy_url, proxy):
        result = run_taxiflow(*TRAIN, "--data-dir", str(tlc_dir), "--tracking-uri", proxy_url)
        assert rule.hits == 1, (f"the fault was never injected ({failing_step})", proxy.seen, result.stderr[-3000:])
        assert result.returncode == 1
        assert "injected: registry refuses" in result.stderr.strip().splitlines()[-1]
        client = MlflowClient(server)
        assert client.search_model_versions("name='nyc-taxi-duration'") == []
        (run,) = _runs(server)
        assert run.info.status == "FAILED"
        assert _flow_run_state(prefect_api, run.data.tags["taxiflow.prefect_flow_run_id"]) == "FAILED"


def test_a_failure_publishing_the_report_leaves_no_version_and_a_failed_run(run_taxiflow, tlc_dir, tmp_path, state_dir, prefect_api):
    with mlflow_server(tmp_path / "mlflow") as server:
        result = run_taxiflow(*TRAIN, "--data-dir", str(tlc_dir), "--tracking-uri", server, env={"TAXIFLOW_FAILPOINTS": "publish-report"})
        assert result.returncode == 1
        assert "failpoint 'publish-report'" in result.stderr
        assert "deleted nyc-taxi-duration version 1: its run failed before the commit point" in result.stderr
        client = MlflowClient(server)
        assert client.search_model_versions("name='nyc-taxi-duration'") == []
        (run,) = _runs(server)
        assert run.info.status == "FAILED"
        assert _flow_run_state(prefect_api, run.data.tags["taxiflow.prefect_flow_run_id"]) == "FAILED"


def test_a_tracking_server_restarted_during_registration_is_survived(run_taxiflow, tlc_dir, tmp_path):
    """The server goes away as the version is created and comes back ~10 s later on the same store."""
    root = tmp_path / "mlflow"
    servers = contextlib.ExitStack()
    first = servers.enter_context(contextlib.ExitStack())
    upstream = first.enter_context(mlflow_server(root))
    restarted = threading.Event()

    def restart() -> None:
        proxy.upstream = "http://127.0.0.1:9"  # nothing listens: the client sees 502s until the new server is up
        first.close()  # SIGINT to the first server, waits for it to exit
        proxy.upstream = servers.enter_context(mlflow_server(root))
        restarted.set()

    def kill_then_restart():
        threading.Thread(target=restart, daemon=True).start()
        return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "server shutting down"}

    rule = Rule("POST", "/model-versions/create", kill_then_restart)
    with servers, fault_proxy(upstream, [rule]) as (proxy_url, proxy):
        result = run_taxiflow(*TRAIN, "--data-dir", str(tlc_dir), "--tracking-uri", proxy_url, "--json")
        assert rule.hits == 1 and restarted.is_set()
        assert result.returncode == 0, result.stderr[-3000:]
        assert "retrying in" in result.stderr  # the hiccup was seen and waited out, not ignored
        summary = result.json()
        client = MlflowClient(proxy.upstream)
        versions = client.search_model_versions("name='nyc-taxi-duration'")
        assert [(v.version, v.run_id, v.tags["taxiflow.state"]) for v in versions] == [("1", summary["run_id"], "committed")]
        assert client.get_run(summary["run_id"]).info.status == "FINISHED"
        # Statuses the client saw through the proxy: the outage happened during registration.
        statuses = [status for method, path, status in proxy.seen if "/model-versions/create" in path or status >= 500]
        assert statuses[0] == 503 and statuses[-1] == 200
