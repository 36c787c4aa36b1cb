"""The model lifecycle through the real command and a real MLflow tracking server (issue 11).

One registry per test: each test states the versions it creates, and depends on no other test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.support.fault_proxy import Rule, fault_proxy
from tests.support.receivers import smtp_receiver, webhook_receiver
from tests.support.servers import VENV_BIN, base_env, mlflow_server

PAIR = ("--train-month", "2023-01", "--val-month", "2023-02")
LINEAR = ("--model", "linear")  # RMSE 6.0345 on the pair, fits in a second
WORSE = ("--max-depth", "1", "--num-boost-round", "5")  # a clearly worse XGBoost (RMSE ~ 9)
BETTER = ("--max-depth", "8", "--num-boost-round", "40")  # better than the linear model (RMSE ~ 5.3)
MODEL = "nyc-taxi-duration"


@pytest.fixture
def tracking(tmp_path):
    with mlflow_server(tmp_path / "mlflow") as uri:
        yield uri


@pytest.fixture
def train(run_taxiflow, tlc_dir, tracking):
    def run(*args: str, expect: int = 0, env: dict[str, str] | None = None) -> dict:
        # --retrain: these runs train the same pair again on purpose (else the second returns the first, cached).
        result = run_taxiflow("train", *PAIR, "--data-dir", str(tlc_dir), "--tracking-uri", tracking, "--retrain", *args, "--json", env=env)
        assert result.returncode == expect, result.stderr[-3000:]
        return result.json() if expect in (0, 3) else {"stderr": result.stderr}

    return run


def _champion(tracking: str) -> str | None:
    aliases = MlflowClient(tracking).get_registered_model(MODEL).aliases
    return aliases.get("champion")


def _models(run_taxiflow, tracking, *args):
    return run_taxiflow("models", *args, "--tracking-uri", tracking, timeout=120)


def test_first_promotes_worse_is_kept_better_promotes(train, tracking, prefect_api):
    first = train(*LINEAR)
    assert (first["model_version"], first["gate"], first["promoted"], first["champion_version"]) == ("1", "promoted", True, "1")
    assert first["decision_reason"] == "first model: there was no champion"
    assert _champion(tracking) == "1"

    worse = train(*WORSE)
    assert worse["rmse"] > first["rmse"] + 1
    assert (worse["model_version"], worse["gate"], worse["promoted"], worse["champion_version"]) == ("2", "kept", False, "1")
    # The champion was re-scored on the same validation rows: its RMSE is the first run's, exactly.
    assert worse["champion_rmse_on_val"] == pytest.approx(first["rmse"], abs=1e-9)
    assert worse["decision_reason"] == f"RMSE {worse['rmse']:.4f} is worse than champion v1's {first['rmse']:.4f} by {worse['rmse'] - first['rmse']:.4f}"
    client = MlflowClient(tracking)
    assert _champion(tracking) == "1"
    assert client.get_registered_model(MODEL).aliases["challenger"] == "2"
    kept = client.get_model_version(MODEL, "2").tags
    assert (kept["taxiflow.gate"], kept["taxiflow.val_month"], kept["taxiflow.promotion_margin"]) == ("kept", "2023-02", "0")
    assert float(kept["taxiflow.champion_rmse_on_val"]) == pytest.approx(first["rmse"], abs=1e-6)
    run_metrics = client.get_run(worse["run_id"]).data.metrics
    assert run_metrics["rmse_improvement"] == pytest.approx(first["rmse"] - worse["rmse"])

    better = train(*BETTER)
    assert better["rmse"] < first["rmse"]
    assert (better["model_version"], better["gate"], better["promoted"], better["champion_version"]) == ("3", "promoted", True, "3")
    assert _champion(tracking) == "3"
    assert client.get_model_version(MODEL, "3").tags["taxiflow.previous_champion"] == "1"

    # The Prefect side: the decision artifact and the report say the same.
    flow_run_id = client.get_run(better["run_id"]).data.tags["taxiflow.prefect_flow_run_id"]
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).json()
    by_key = {a["key"]: a["data"] for a in artifacts}
    assert "**v3 is the new champion.**" in by_key["promotion-decision"]
    assert "## Promotion" in by_key["duration-model-report"] and "Gate **promoted**" in by_key["duration-model-report"]
    assert f"{tracking}/#/models/{MODEL}/versions/3" in by_key["duration-model-report"]
    # The report a person reads: the plots in the MLflow run, RMSE by borough in Prefect.
    plots = sorted(a.path for a in client.list_artifacts(better["run_id"], "plots"))
    assert plots == [f"plots/{name}.png" for name in ("champion_vs_challenger", "predicted_vs_actual", "residuals", "rmse_by_borough", "rmse_by_distance")]
    assert "champion_vs_challenger.png" in by_key["duration-model-report"]
    boroughs = {row["borough"]: row for row in json.loads(by_key["rmse-by-borough"])}
    assert sum(row["trips"] for row in boroughs.values()) == better["rows_val"]
    assert boroughs["Manhattan"]["trips"] > boroughs["Queens"]["trips"] > boroughs["Brooklyn"]["trips"]


def test_never_force_promote_and_rollback(train, run_taxiflow, tracking):
    train(*LINEAR)  # v1, champion
    never = train(*BETTER, "--promote", "never")
    assert (never["model_version"], never["gate"], never["promoted"]) == ("2", "kept", False)
    assert never["decision_reason"] == "promotion disabled for this run (promote=never)"
    assert _champion(tracking) == "1"

    refused = train(*WORSE, "--promote", "force", expect=2)
    assert "taxiflow: error: --promote force needs --reason" in refused["stderr"]
    forced = train(*WORSE, "--promote", "force", "--reason", "ops drill")
    assert (forced["model_version"], forced["gate"], forced["promoted"]) == ("3", "forced", True)
    assert _champion(tracking) == "3"
    tags = MlflowClient(tracking).get_model_version(MODEL, "3").tags
    assert tags["taxiflow.promotion_reason"] == "forced: ops drill" and tags["taxiflow.previous_champion"] == "1"

    promoted = _models(run_taxiflow, tracking, "promote", "2", "--reason", "better on a month we trust")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"{MODEL} champion: v3 -> v2 (better on a month we trust)"
    assert _champion(tracking) == "2"

    back = _models(run_taxiflow, tracking, "rollback", "--reason", "v2 misbehaves")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"{MODEL} champion: v2 -> v3 (rollback: v2 misbehaves)"
    assert _champion(tracking) == "3"
    # The history is a chain: rolling back again follows v3's own record to v1.
    assert _models(run_taxiflow, tracking, "rollback").returncode == 0
    assert _champion(tracking) == "1"
    end = _models(run_taxiflow, tracking, "rollback")
    assert end.returncode == 2 and "taxiflow: error: nyc-taxi-duration v1 has no previous champion to roll back to" in end.stderr

    listing = _models(run_taxiflow, tracking, "ls", "--json")
    rows = {r["version"]: r for r in json.loads(listing.stdout)}
    assert rows["1"]["aliases"] == ["champion"] and rows["3"]["aliases"] == ["challenger"]
    assert [rows[v]["gate"] for v in ("1", "2", "3")] == ["promoted", "forced", "forced"]
    assert rows["3"]["previous_champion"] == "1" and rows["2"]["state"] == "committed"


@pytest.mark.parametrize(
    "args, message",
    [
        (("promote", "7", "--reason", "x"), "taxiflow: error: nyc-taxi-duration has no version 7"),
        (("promote", "other-model/1", "--reason", "x"), "taxiflow: error: 'other-model/1' is a version of model 'other-model', not of 'nyc-taxi-duration'"),
        (("promote", "1", "--reason", "x", "--model-name", "nope"), "taxiflow: error: no registered model named 'nope'"),
        (("promote", "one", "--reason", "x"), "taxiflow: error: model version must be a number, got 'one'"),
    ],
)
def test_bad_model_commands_move_nothing(train, run_taxiflow, tracking, args, message):
    train(*LINEAR)
    result = _models(run_taxiflow, tracking, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert _champion(tracking) == "1"


def test_an_unloadable_champion_is_not_evaluated_and_kept(train, tracking, tmp_path):
    train(*LINEAR)
    # Delete the champion's model files on the server's artifact store.
    bundles = list((tmp_path / "mlflow" / "artifacts").rglob("bundle"))
    assert len(bundles) == 1
    for f in bundles[0].iterdir():
        f.unlink()
    second = train(*BETTER)
    assert (second["gate"], second["promoted"], second["champion_version"]) == ("not-evaluated", False, "1")
    assert second["decision_reason"].startswith("champion v1 could not be scored: nyc-taxi-duration v1: model files could not be loaded")
    assert _champion(tracking) == "1"
    required = train(*BETTER, "--require-promotion", expect=3)
    assert required["gate"] == "not-evaluated" and _champion(tracking) == "1"


def test_two_concurrent_runs_leave_the_better_model_champion(tlc_dir, tmp_path, tracking, prefect_api):
    env = base_env(TAXIFLOW_STATE_DIR=str(tmp_path / "state"), PREFECT_API_URL=prefect_api)
    runs = [
        subprocess.Popen(
            [str(VENV_BIN / "taxiflow"), "train", *PAIR, "--data-dir", str(tlc_dir), "--tracking-uri", tracking, *extra, "--json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in (WORSE, LINEAR)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr[-3000:]
    worse, linear = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    # Whichever committed first, the gate ran one after the other: the better model is champion.
    assert _champion(tracking) == linear["model_version"]
    assert linear["gate"] == "promoted"
    if worse["gate"] == "promoted":  # it went through the gate first, with no champion yet
        assert linear["previous_champion_version"] == worse["model_version"]
    else:
        assert (worse["gate"], worse["champion_version"]) == ("kept", linear["model_version"])


def test_a_run_killed_during_registration_moves_no_alias(run_taxiflow, tlc_dir, tmp_path, tracking, prefect_api):
    """SIGKILL while the version is being created: no alias moves, the version (if any) stays pending."""
    first = run_taxiflow("train", *PAIR, *LINEAR, "--data-dir", str(tlc_dir), "--tracking-uri", tracking, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    reached = threading.Event()
    release = threading.Event()

    def hold():
        reached.set()
        release.wait(120)
        return None  # then forward: the version gets created, by a process already dead

    rule = Rule("POST", "/model-versions/create", hold)
    with fault_proxy(tracking, [rule]) as (proxy_url, _):
        env = base_env(TAXIFLOW_STATE_DIR=str(tmp_path / "state"), PREFECT_API_URL=prefect_api)
        process = subprocess.Popen(
            [str(VENV_BIN / "taxiflow"), "train", *PAIR, *BETTER, "--data-dir", str(tlc_dir), "--tracking-uri", proxy_url],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert reached.wait(300), "the run never reached registration"
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        finally:
            release.set()
    client = MlflowClient(tracking)
    assert _champion(tracking) == "1"
    assert client.get_registered_model(MODEL).aliases == {"champion": "1", "challenger": "1"}  # both still the first run's
    for version in client.search_model_versions(f"name='{MODEL}'"):
        if version.version != "1":
            assert version.tags["taxiflow.state"] == "pending"


def test_notifications_reach_a_webhook_and_an_smtp_server_and_a_broken_receiver_fails_nothing(train, run_taxiflow, tracking, prefect_api):
    token, password = "T0K3N-5ecret-path-9f3a", "smtp-pa55-7c1e"
    with webhook_receiver() as hook, webhook_receiver("500") as broken, smtp_receiver(username="bot", password=password) as smtp:
        saved = [
            run_taxiflow("notify", "webhook", "--name", "ops-hook", "--allow-private-urls", env={"TAXIFLOW_WEBHOOK_URL": hook.url(f"/services/{token}")}),
            run_taxiflow("notify", "webhook", "--name", "ops-broken", "--allow-private-urls", env={"TAXIFLOW_WEBHOOK_URL": broken.url(f"/services/{token}")}),
            run_taxiflow(
                "notify",
                "email",
                "--name",
                "ops-mail",
                "--server",
                "127.0.0.1",
                "--port",
                str(smtp.port),
                "--username",
                "bot",
                "--smtp-type",
                "INSECURE",
                env={"TAXIFLOW_SMTP_PASSWORD": password},
            ),
        ]
        for result in saved:
            assert result.returncode == 0, result.stderr[-2000:]
        targets = ("--notify", "webhook:ops-hook", "--notify", "email:ops-mail:ml@example.com", "--notify", "webhook:ops-broken")
        done = train(*LINEAR, *targets)
        assert done["promoted"] is True
        # One message per working target, naming the decision; the 500 receiver was tried and failed the run in nothing.
        assert len(hook.posts) == 1 and len(broken.posts) == 1
        text = hook.posts[0].json["text"]
        assert "promoted v1" in text and "2023-01->2023-02" in text and f"{done['rmse']:.2f}" in text
        (mail,) = smtp.messages
        assert mail.rcpt_tos == ["ml@example.com"] and "promoted v1" in mail.message["Subject"]

        failed = train(*LINEAR, *targets, expect=1, env={"TAXIFLOW_FAILPOINTS": "publish-report"})
        assert "failpoint 'publish-report'" in failed["stderr"]
        assert len(hook.posts) == 2 and "failed" in hook.posts[1].json["text"].lower()
        assert len(smtp.messages) == 2

    # The secrets are in the blocks only: not in the console, not in the flow runs' parameters.
    for output in [r.stdout + r.stderr for r in saved] + [failed["stderr"]]:
        assert token not in output and password not in output
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"flow_runs": {"name": {"like_": ""}}, "limit": 200}).json()
    notified = [r for r in runs if r["parameters"].get("notify")]
    assert notified and all(token not in json.dumps(r["parameters"]) and password not in json.dumps(r["parameters"]) for r in notified)
