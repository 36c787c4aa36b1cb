"""Planted secrets appear nowhere a person or another system could read them.

One end-to-end run of the platform as a user drives it, with four secrets made fresh for this run:

- AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the user's environment (every command's), so
  `taxiflow stack up` makes the stack's `taxi-aws` credentials block from them;
- a password in the MLflow tracking URI given to `taxiflow train --tracking-uri`
  (http://ci-user:<password>@127.0.0.1:<port>: the stack's MLflow server has no auth, so the Basic
  credentials MLflow's client derives from the userinfo are ignored and requests succeed);
- a token in the path of a webhook URL (a local receiver), saved with `taxiflow notify webhook`.

Then `taxiflow train --notify webhook:<block>` and a deployment run through the worker (also notifying),
and every place their traces land is searched, as bytes, for each secret's random part (also
base64-encoded, at any alignment: a Basic auth header, a blob in JSON).

Where each secret may be, and why (anywhere else is a leak):

| secret | allowed in | why |
|---|---|---|
| AWS secret key | the `taxi-aws` block read *with* secrets | the block is where it is meant to live; Prefect returns secret fields obfuscated, and encrypts block data at rest (Fernet, with a key kept in the same database: the test checks that only its owner can read that directory) |
| AWS access key ID | the `taxi-aws` block and the `taxi-data` S3Bucket block that nests it, in API reads; the `prefect.block-document.*` events of those blocks (API), and in Prefect's database only as those events' `"aws_access_key_id": "<id>"` field | prefect-aws declares `aws_access_key_id` a plain field (an identifier, like a user name), so Prefect shows it with the block, and its server puts "the non-secret string values" of a block into the block's lifecycle events (`prefect/server/events/schemas/lifecycle.py`), stored in clear in the events table. Secret fields are left out of events, and block data itself is encrypted at rest |
| webhook token | its `custom-webhook` block read *with* secrets; the receiver's request path | the block's secret field; the receiver is its destination |
| tracking password | nowhere | taxiflow passes it to the flow by environment, never as a parameter, and prints the URI masked |

(Processes' environments hold the AWS keys by design - that is how they reach the servers and the
flow runs - and /proc/<pid>/environ is readable by the same user only: not scanned. The `taxiflow
train` command line holds the password because the test typed it there: exempt from the
command-line scan; every other process's command line, readable by anyone with `ps`, is scanned.)

Searched: stdout and stderr of every command; every file (and file name) the run left under its
directory - the stack's state dir (logs, stack.json, stack.env, PID records, Prefect's and MLflow's
SQLite databases with their WAL files, MLflow's artifact store), the Prefect homes of the servers, the
worker and the CLI; Prefect through its API (flow runs and their parameters, task runs, logs,
artifacts, events, deployments, work pools, flows, variables, automations, block documents read
without secrets); MLflow through its API (experiments, runs' params, tags and metrics, registered
model and versions with their tags and aliases, logged models, and every artifact file of every run
and model, downloaded: the model's code directory included); what the webhook receiver was sent;
the repo's prefect.yaml and any repo file written during the run; every process's command line,
sampled throughout.

Positive controls, so a clean scan means something: the receiver saw the token in its request
path; the command-line watch saw the password on the train command line; the blocks read with secrets hold the AWS secret, the key ID and the token; Prefect's database
bytes hold the (random) webhook block name and MLflow's the runs' ids; the downloaded models hold
their code directory; the logs API returns the runs' log lines.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.support.receivers import webhook_receiver
from tests.support.secrets_scan import CmdlineWatch, Scanner, Secret, plant
from tests.support.servers import VENV_BIN, base_env, free_port, process_tree, still_running, wait_for

pytestmark = pytest.mark.servers
REPO = Path(__file__).resolve().parents[1]
MODEL = "nyc-taxi-duration"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CREDENTIALS_BLOCK, BUCKET_BLOCK = "taxi-aws", "taxi-data"


@dataclass
class Command:
    shown: str
    returncode: int
    stdout: str
    stderr: str


class PlantedStack:
    """The stack in a directory of its own, driven through the real commands with the planted AWS keys in every environment."""

    def __init__(self, root: Path, data_dir: Path, aws_key: Secret, aws_secret: Secret):
        self.root = root
        self.state_dir = root / "state"
        ports = {name: str(free_port()) for name in ("PREFECT", "MLFLOW", "S3")}
        self.env = base_env(
            TAXIFLOW_STATE_DIR=str(self.state_dir),
            TAXIFLOW_DATA_DIR=str(data_dir),
            **{f"TAXIFLOW_STACK_{name}_PORT": port for name, port in ports.items()},
            PREFECT_HOME=str(root / "cli-prefect-home"),  # what the CLI writes locally stays where it is scanned
            AWS_ACCESS_KEY_ID=aws_key.value,
            AWS_SECRET_ACCESS_KEY=aws_secret.value,
            AWS_DEFAULT_REGION="us-east-1",
        )
        self.mlflow_port = int(ports["MLFLOW"])
        self.api = f"http://127.0.0.1:{ports['PREFECT']}/api"
        self.mlflow = f"http://127.0.0.1:{ports['MLFLOW']}"
        self.pointed = {"PREFECT_API_URL": self.api, "MLFLOW_TRACKING_URI": self.mlflow}  # what `eval "$(taxiflow stack env)"` sets
        self.commands: list[Command] = []

    def run(self, *args: str, tool: str = "taxiflow", env: dict[str, str] | None = None, timeout: float = 300, on_start=None) -> Command:
        process = subprocess.Popen(
            [str(VENV_BIN / tool), *args],
            cwd=self.root,
            env=dict(self.env, **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if on_start is not None:
            on_start(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        words = itertools.takewhile(lambda arg: not arg.startswith("-"), args[:3])
        command = Command(f"{tool} {' '.join(words)}", process.returncode, stdout, stderr)
        self.commands.append(command)
        return command

    def stack_file(self) -> Path:
        return self.state_dir / "stack" / "stack.json"

    def processes(self):
        """Every live process of the stack: its services' sessions and process groups, and their descendants (flow runs too)."""
        if not self.stack_file().exists():
            return set()
        services = json.loads(self.stack_file().read_text())["services"].values()
        return process_tree({s["pid"] for s in services}, {s[k] for s in services for k in ("sid", "pgid")})

    def down(self) -> tuple[Command | None, set]:
        """`taxiflow stack down`; returns it and what of the stack was still running after it."""
        before = self.processes()
        if not before:
            return None, set()
        return self.run("stack", "down", timeout=120), still_running(before)

    def prefect_all(self, path: str, body: dict | None = None) -> list:
        """Every item of a Prefect `.../filter` endpoint, page by page."""
        items, offset = [], 0
        while True:
            response = httpx.post(f"{self.api}/{path}", json={**(body or {}), "limit": 200, "offset": offset}, timeout=30)
            assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text[:300]}"
            page = response.json()
            items += page
            if len(page) < 200:
                return items
            offset += 200

    def events(self) -> list:
        page = httpx.post(f"{self.api}/events/filter", json={"limit": 50}, timeout=30).json()
        events = list(page["events"])
        while page.get("next_page"):
            page = httpx.get(page["next_page"], timeout=30).json()
            events += page["events"]
        return events


@pytest.fixture
def planted() -> dict[str, Secret]:
    return {
        "aws_key": plant("AWS_ACCESS_KEY_ID", "AKIA{}", 8, upper=True),
        "aws_secret": plant("AWS_SECRET_ACCESS_KEY", "pl4nted-aws-secret-{}", 16),
        "password": plant("tracking password", "pl4nted-pw-{}", 12),
        "token": plant("webhook token", "pl4nted-hook-{}", 12),
    }


@pytest.fixture
def stack(tmp_path, tlc_dir, planted):
    (tmp_path / "run").mkdir()
    stack = PlantedStack(tmp_path / "run", tlc_dir, planted["aws_key"], planted["aws_secret"])
    try:
        yield stack
    finally:
        # Always stopped, whatever happened: `down`, then anything of it that survived (by PID, as recorded).
        _, left = stack.down()
        for proc in left:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_run(stack: PlantedStack, run_id: str, timeout_s: float = 300) -> dict:
    def finished():
        run = httpx.get(f"{stack.api}/flow_runs/{run_id}", timeout=10).json()
        return run if run["state"]["type"] in TERMINAL else None

    return wait_for(finished, timeout_s=timeout_s, interval_s=1, what=f"flow run {run_id} to finish")


def test_planted_secrets_appear_nowhere_they_could_be_read(stack, planted, tlc_dir, tmp_path):
    started_at = time.time()
    aws_key, aws_secret, password, token = planted["aws_key"], planted["aws_secret"], planted["password"], planted["token"]
    scanner = Scanner(list(planted.values()))
    shown = scanner.masked  # failure messages quote outputs: with every planted secret masked
    tracking_uri = f"http://ci-user:{password.value}@127.0.0.1:{stack.mlflow_port}"
    block = plant("webhook block name", "hook-{}", 6).value  # random: a canary that must show in Prefect's database
    hook_path = f"/services/{token.value}"

    with CmdlineWatch(scanner) as ps, webhook_receiver() as hook:
        up = stack.run("stack", "up")
        assert up.returncode == 0, shown(up.stdout + up.stderr)
        saved = stack.run("notify", "webhook", "--name", block, "--allow-private-urls", env={**stack.pointed, "TAXIFLOW_WEBHOOK_URL": hook.url(hook_path)})
        assert saved.returncode == 0, shown(saved.stderr[-2000:])
        deploy = stack.run("deploy", env=stack.pointed)
        assert deploy.returncode == 0, shown(deploy.stdout + deploy.stderr)

        # The worker's run and the CLI's run at the same time: the test takes as long as the slower one.
        started = stack.run(
            "deployment",
            "run",
            "train/taxi-local-data",
            "-p",
            "train_month=2023-01",
            "-p",
            "val_month=2023-02",
            "-p",
            "model=linear",
            "-p",
            f'notify=["webhook:{block}"]',
            "-p",
            "retrain=true",  # both runs train the same pair: neither may return the other's version (cached)
            tool="prefect",
            env=stack.pointed,
            timeout=120,
        )
        assert started.returncode == 0, shown(started.stdout + started.stderr)
        deployment_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

        # The server ignores the userinfo (MLflow's client sends it as Basic auth; the server has no auth).
        assert MlflowClient(tracking_uri).search_experiments(max_results=1) is not None
        train = stack.run(
            "train",
            "--train-month",
            "2023-01",
            "--val-month",
            "2023-02",
            "--model",
            "linear",
            "--source",
            "local",
            "--data-dir",
            str(tlc_dir),
            "--tracking-uri",
            tracking_uri,
            "--notify",
            f"webhook:{block}",
            "--retrain",
            env=stack.pointed,
            timeout=600,
            on_start=lambda pid: ps.exempt(pid, password.label),
        )
        assert train.returncode == 0, shown(train.stdout[-3000:] + train.stderr[-3000:])
        cli_run_id = re.search(r"MLflow run ([0-9a-f]{32}) in (\S+)", train.stdout)
        assert cli_run_id, shown(train.stdout)
        assert cli_run_id.group(2) == f"http://ci-user:***@127.0.0.1:{stack.mlflow_port}", "the printed tracking URI has its password masked"

        deployment_run = _wait_for_run(stack, deployment_run_id)
        assert deployment_run["state"]["type"] == "COMPLETED", deployment_run["state"]
        status = stack.run("stack", "status", env=stack.pointed, timeout=120)
        assert status.returncode == 0, shown(status.stdout + status.stderr)

        # --- the webhook receiver: the token is in the path it was called at (control), in no message.
        assert len(hook.posts) == 2, f"one message from the CLI's run, one from the worker's: {[p.path for p in hook.posts]}"
        for i, post in enumerate(hook.posts):
            assert post.path == hook_path and scanner.holds(post.path, token), "control: the receiver was called at the secret URL"
            scanner.scan(f"webhook message {i} (body)", post.json)
            scanner.scan(f"webhook message {i} (headers)", post.headers)

        # --- Prefect, through its API (what the UI shows).
        documents = stack.prefect_all("block_documents/filter", {"include_secrets": False})
        with_secrets = {d["name"]: d for d in stack.prefect_all("block_documents/filter", {"include_secrets": True})}
        assert scanner.holds(with_secrets[CREDENTIALS_BLOCK]["data"], aws_secret), "control: the AWS secret is in its block"
        assert scanner.holds(with_secrets[CREDENTIALS_BLOCK]["data"], aws_key), "control: the AWS key ID is in its block"
        assert scanner.holds(with_secrets[block]["data"], token), "control: the webhook token is in its block"
        assert {CREDENTIALS_BLOCK, BUCKET_BLOCK, block} <= {d["name"] for d in documents}
        for document in documents:
            allowed = {aws_key.label} if document["name"] in (CREDENTIALS_BLOCK, BUCKET_BLOCK) else set()
            scanner.scan(f"Prefect API: block document {document['name']} (read without secrets)", document, allowed)
        flow_runs = stack.prefect_all("flow_runs/filter")
        assert {deployment_run_id} < {r["id"] for r in flow_runs} and all("notify" in r["parameters"] for r in flow_runs if r["deployment_id"] is None)
        for run in flow_runs:
            scanner.scan(f"Prefect API: flow run {run['name']} (parameters, state, job variables)", run)
        logs = stack.prefect_all("logs/filter")
        assert any("validation RMSE" in entry["message"] and entry["flow_run_id"] == deployment_run_id for entry in logs), "control: the runs' logs are read"
        scanner.scan("Prefect API: logs", logs)
        artifacts = stack.prefect_all("artifacts/filter")
        assert {"duration-model-report", "promotion-decision", "data-quality"} <= {a["key"] for a in artifacts}
        scanner.scan("Prefect API: artifacts", artifacts)
        for path in ("task_runs/filter", "deployments/filter", "work_pools/filter", "flows/filter", "variables/filter", "automations/filter"):
            scanner.scan(f"Prefect API: {path.split('/')[0]}", stack.prefect_all(path))
        for event in stack.events():
            own_block_event = event["event"].startswith("prefect.block-document.") and event["payload"].get("name") in (CREDENTIALS_BLOCK, BUCKET_BLOCK)
            scanner.scan(f"Prefect API: event {event['event']}", event, {aws_key.label} if own_block_event else ())

        # --- MLflow, through its API: runs, registry, logged models, and every artifact file downloaded.
        client = MlflowClient(stack.mlflow)
        experiments = client.search_experiments(view_type=ViewType.ALL)
        scanner.scan("MLflow API: experiments", [dict(e) for e in experiments])
        runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
        assert {cli_run_id.group(1)} < {r.info.run_id for r in runs}
        assert deployment_run_id in {r.data.tags.get("taxiflow.prefect_flow_run_id") for r in runs}
        downloads = tmp_path / "downloads"  # beside the run's directory, scanned on its own
        for run in runs:
            scanner.scan(f"MLflow API: run {run.info.run_name} (params, tags, metrics)", run.to_dictionary())
            client.download_artifacts(run.info.run_id, "", str(downloads / "runs" / run.info.run_id))
        scanner.scan("MLflow API: registered models", [dict(m) for m in client.search_registered_models()])
        versions = client.search_model_versions(f"name='{MODEL}'")
        assert len(versions) >= 2, [v.version for v in versions]
        scanner.scan("MLflow API: model versions (tags, source, aliases)", [dict(v) for v in versions])
        logged = client.search_logged_models(experiment_ids=[e.experiment_id for e in experiments])
        assert len(logged) >= 2
        for model in logged:
            scanner.scan(f"MLflow API: logged model {model.model_id}", model.to_dictionary())
            target = downloads / "models" / model.model_id
            mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(target), tracking_uri=stack.mlflow)
            assert next(target.rglob("code/taxiflow/io/tracking.py"), None), "control: the model's code directory was downloaded"
        downloaded = scanner.scan_tree(downloads, prefix="MLflow artifact (downloaded) ")

        # --- stop the stack: nothing of it may outlive `down` (which deletes stack.json: read it first).
        scanner.scan("state dir: stack/stack.json (while up)", stack.stack_file().read_bytes())
        down, left = stack.down()
        assert down is not None and down.returncode == 0, down and shown(down.stdout + down.stderr)
        assert not left, "still running after `taxiflow stack down`: " + ", ".join(f"{p.pid} {p.cmdline[:120]}" for p in left)

    assert ps.exempted(), "control: the command-line watch saw the password on the `taxiflow train` command line the test typed"

    # --- every command's output.
    for command in stack.commands:
        scanner.scan(f"`{command.shown}` stdout", command.stdout)
        scanner.scan(f"`{command.shown}` stderr", command.stderr)

    # --- every file the run left (the servers are down: their databases are complete and still).
    prefect_home = stack.state_dir / "stack" / "prefect-home"
    files = scanner.scan_tree(stack.root, allow=lambda path: {aws_key.label} if path.parent == prefect_home and path.name.startswith("prefect.db") else ())
    prefect_db = b"".join(p.read_bytes() for p in prefect_home.glob("prefect.db*"))
    # Block data is encrypted with a Fernet key kept in the same database (table `configuration`): whoever
    # reads the file can decrypt every block. Only its owner may: Prefect makes its home directory 0700.
    assert prefect_home.stat().st_mode & 0o077 == 0, f"{prefect_home} is open to other users: {oct(prefect_home.stat().st_mode)}"
    # ...and there only as the field of the block's lifecycle events: anywhere else in the database is a leak.
    scanner.scan("prefect.db (besides the block events' aws_access_key_id field)", prefect_db.replace(f'"aws_access_key_id": "{aws_key.value}"'.encode(), b""))
    mlflow_db = b"".join(p.read_bytes() for p in (stack.state_dir / "stack").glob("mlflow.db*"))
    assert block.encode() in prefect_db, "control: Prefect's database is read (the webhook block's name is in it)"
    assert cli_run_id.group(1).encode() in mlflow_db, "control: MLflow's database is read (the run's id is in it)"
    assert {p.name for p in files} >= {"stack.env", "worker.log", "prefect.log", "mlflow.log", "MLmodel"}, sorted({p.name for p in files})
    for path in [REPO / "prefect.yaml", *_repo_files_written_since(started_at)]:
        scanner.scan(f"repo: {path.relative_to(REPO)}", path.read_bytes())

    summary = (
        f"scanned {len(scanner.scanned)} places, {sum(scanner.scanned.values()) / 1e6:.1f} MB: {len(files)} files under the run's directory, "
        f"{len(downloaded)} downloaded MLflow artifact files, {len(stack.commands)} commands' output, {len(hook.posts)} webhook messages, "
        f"process command lines ({ps.samples} samples; exempt, typed by the test: {len(ps.exempted())})"
    )
    print(summary)
    if scanner.findings:  # not an assert: pytest's introspection would print the scanner, planted values and all
        pytest.fail(f"planted secrets found where they may not be ({summary}):\n{scanner.report()}", pytrace=False)


def _repo_files_written_since(since: float) -> list[Path]:
    """Files in the repo (not its venv or git store) modified after `since`: anything `deploy` or a run wrote there."""
    found = []
    for directory, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in (".venv", ".git", ".tools", "__pycache__")]
        for name in filenames:
            path = Path(directory, name)
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= since:
                    found.append(path)
            except OSError:
                continue
    return found
