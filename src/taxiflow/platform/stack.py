"""`taxiflow stack up | status | down`: the whole local platform, idempotently, on 127.0.0.1.

State (PIDs with their session, process group and start time; ports; URLs) lives in
`<state_dir>/stack/stack.json`; logs beside it. `up` starts only what isn't already healthy; `down`
stops the process tree of each service recorded there - flow runs and servers' children included -
worker first, so runs stop while the servers they report to are still up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from taxiflow.platform.postgres import ensure_postgres
from taxiflow.platform.processes import PlatformError, ServiceProcess, is_healthy, is_running, port_in_use, start_service, stop_service
from taxiflow.settings import TaxiflowSettings

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[3]  # the code directory deployments run from
ORDER = ("postgres", "s3", "mlflow", "prefect", "worker", "serve")  # start order; stopped in reverse
HEARTBEAT_S = 30  # flow runs started by the worker report every 30 s (Prefect's minimum)...
ZOMBIE_AFTER_S = 90  # ...and one silent for 90 s is marked Crashed (its process or worker died)
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}


@dataclass
class StackState:
    path: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    db: str = "sqlite"
    artifacts: str = "local"

    @classmethod
    def load(cls, path: Path) -> StackState:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        services = {name: ServiceProcess(**svc) for name, svc in data.get("services", {}).items()}
        return cls(path, services, data.get("urls", {}), data.get("db", "sqlite"), data.get("artifacts", "local"))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"services": {n: s.to_json() for n, s in self.services.items()}, "urls": self.urls, "db": self.db, "artifacts": self.artifacts}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, self.path)


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_URI"))}
    env.update(QUIET)
    env.update(extra)
    return env


def _free_or_fail(settings: TaxiflowSettings, name: str, port: int, option: str) -> None:
    if port_in_use(settings.stack_host, port):
        raise PlatformError(
            f"{name}: port {port} on {settings.stack_host} is already in use by another process; stop it or choose another port (TAXIFLOW_{option})"
        )


def _aws_keys() -> tuple[str, str, bool]:
    """AWS keys from the environment; for the local S3 server, fresh random ones if none are set."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return key, secret, False
    return f"taxiflow-{secrets.token_hex(6)}", secrets.token_urlsafe(24), True


def stack_up(
    settings: TaxiflowSettings,
    *,
    db: str = "sqlite",
    artifacts: str = "local",
    upload: list[tuple[str, str]] | None = None,
    serve: bool = False,
    say=print,
) -> StackState:
    root = settings.stack_dir()
    logs = root / "logs"
    state = StackState.load(root / "stack.json")
    if state.services and db != state.db and any(is_running(s) for s in state.services.values()):
        raise PlatformError(f"the stack is running with --db {state.db}; run `taxiflow stack down` before switching to --db {db}")
    state.db, state.artifacts = db, artifacts
    host = settings.stack_host
    key, secret, generated = _aws_keys()
    aws_env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}

    def keep_or_start(name: str, start) -> ServiceProcess:
        current = state.services.get(name)
        if current is not None and is_healthy(current):
            say(f"  {name:<9}already up (pid {current.pid})")
            return current
        if current is not None:
            stop_service(current)  # a half-dead leftover: replace it
        service = start()
        state.services[name] = service
        state.save()
        say(f"  {name:<9}started (pid {service.pid}{f', port {service.port}' if service.port else ''})")
        return service

    # Every port we will need, checked before anything starts: a clash leaves nothing half-started.
    wanted = {
        "s3": (settings.stack_s3_port, "STACK_S3_PORT"),
        "mlflow": (settings.stack_mlflow_port, "STACK_MLFLOW_PORT"),
        "prefect": (settings.stack_prefect_port, "STACK_PREFECT_PORT"),
    }
    if db == "postgres":
        wanted["postgres"] = (settings.stack_postgres_port, "STACK_POSTGRES_PORT")
    if serve:
        wanted["serve"] = (settings.stack_serve_port, "STACK_SERVE_PORT")
    for name, (port, option) in wanted.items():
        current = state.services.get(name)
        if current is None or not is_running(current):
            _free_or_fail(settings, name, port, option)
    say(f"Bringing up the taxiflow stack in {root}")
    # PostgreSQL (optional) for both servers' metadata.
    prefect_db_url, mlflow_backend = None, f"sqlite:///{root / 'mlflow.db'}"
    if db == "postgres":
        pg = keep_or_start(
            "postgres", lambda: ensure_postgres(root / "postgres", host, settings.stack_postgres_port, logs / "postgres.log", _free_or_fail_cb(settings))
        )
        prefect_db_url = f"postgresql+asyncpg://postgres@{host}:{pg.port}/prefect"
        mlflow_backend = f"postgresql://postgres@{host}:{pg.port}/mlflow"

    s3_url = f"http://{host}:{settings.stack_s3_port}"

    def start_s3() -> ServiceProcess:
        _free_or_fail(settings, "S3 server", settings.stack_s3_port, "STACK_S3_PORT")
        return start_service(
            "s3",
            [str(BIN / "moto_server"), "-H", host, "-p", str(settings.stack_s3_port)],
            env=_base_env(),
            log=logs / "s3.log",
            port=settings.stack_s3_port,
            health_url=f"{s3_url}/moto-api/",
            marker="moto_server",
        )

    keep_or_start("s3", start_s3)
    _ensure_bucket(s3_url, settings.stack_bucket, aws_env)

    mlflow_url = f"http://{host}:{settings.stack_mlflow_port}"

    def start_mlflow() -> ServiceProcess:
        _free_or_fail(settings, "MLflow server", settings.stack_mlflow_port, "STACK_MLFLOW_PORT")
        destination = f"s3://{settings.stack_bucket}/mlflow-artifacts" if artifacts == "s3" else str(root / "mlartifacts")
        env = _base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **({"MLFLOW_S3_ENDPOINT_URL": s3_url, **aws_env} if artifacts == "s3" else {}))
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            host,
            "--port",
            str(settings.stack_mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            mlflow_backend,
            "--artifacts-destination",
            destination,
        ]
        return start_service(
            "mlflow", cmd, env=env, log=logs / "mlflow.log", port=settings.stack_mlflow_port, health_url=f"{mlflow_url}/health", marker="mlflow"
        )

    keep_or_start("mlflow", start_mlflow)

    api_url = f"http://{host}:{settings.stack_prefect_port}/api"

    def start_prefect() -> ServiceProcess:
        _free_or_fail(settings, "Prefect server", settings.stack_prefect_port, "STACK_PREFECT_PORT")
        # The UI asks its server where the API is: without this it says :4200 whatever port the stack uses.
        env = _base_env(
            PREFECT_HOME=str(root / "prefect-home"),
            PREFECT_UI_API_URL=api_url,
            **({"PREFECT_API_DATABASE_CONNECTION_URL": prefect_db_url} if prefect_db_url else {}),
        )
        cmd = [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(settings.stack_prefect_port)]
        return start_service(
            "prefect",
            cmd,
            env=env,
            log=logs / "prefect.log",
            port=settings.stack_prefect_port,
            health_url=f"{api_url}/health",
            marker="prefect server start",
            timeout_s=120,
        )

    keep_or_start("prefect", start_prefect)
    state.urls = {"prefect_api": api_url, "prefect_ui": api_url.removesuffix("/api"), "mlflow": mlflow_url, "s3": s3_url}
    state.save()

    # Blocks and the work pool live in the Prefect server: create them idempotently.
    os.environ["PREFECT_API_URL"] = api_url
    from taxiflow.io.s3_blocks import save_s3_blocks

    os.environ.update(aws_env)
    save_s3_blocks(settings.stack_bucket, bucket_block=settings.s3_block, bucket_folder="trip-data", endpoint_url=s3_url)
    keys = "generated keys for the local S3 server" if generated else "keys from AWS_* env"
    say(f"  blocks   aws-credentials/taxi-aws ({keys}), s3-bucket/{settings.s3_block}")
    _ensure_work_pool(settings.work_pool)
    say(f"  pool     {settings.work_pool} (process)")
    _ensure_zombie_automation(api_url)
    say(f"  automation crash-zombie-flow-runs (no heartbeat for {ZOMBIE_AFTER_S} s -> Crashed)")
    if upload:
        _upload_months(settings, upload, say)

    def start_worker() -> ServiceProcess:
        env = _base_env(
            PREFECT_API_URL=api_url,
            MLFLOW_TRACKING_URI=mlflow_url,
            TAXIFLOW_STATE_DIR=str(settings.state_dir.resolve()),
            TAXIFLOW_DATA_DIR=str(settings.data_dir.resolve()),
            TAXIFLOW_CODE_DIR=str(REPO_ROOT),
            PREFECT_HOME=str(root / "worker-home"),
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S),
            TAXIFLOW_EXIT_WITH_WORKER="1",
        )
        cmd = [str(BIN / "prefect"), "worker", "start", "--pool", settings.work_pool, "--type", "process", "--name", "taxiflow-worker"]
        return start_service("worker", cmd, env=env, log=logs / "worker.log", port=None, health_url=None, marker="prefect worker start")

    worker = keep_or_start("worker", start_worker)
    if not wait_for_worker(api_url, settings.work_pool, worker):
        raise PlatformError(f"the worker did not start polling {settings.work_pool}; see {worker.log}")

    serve_url = f"http://{host}:{settings.stack_serve_port}"

    def start_serve() -> ServiceProcess:
        _free_or_fail(settings, "prediction service", settings.stack_serve_port, "STACK_SERVE_PORT")
        # Healthy once the process answers; it loads the champion in the background (`/ready`), and
        # follows the alias, so a stack without a champion yet serves one as soon as a run promotes it.
        cmd = [str(BIN / "taxiflow"), "serve", "--host", host, "--port", str(settings.stack_serve_port), "--tracking-uri", mlflow_url]
        env = _base_env(TAXIFLOW_STATE_DIR=str(settings.state_dir.resolve()))
        return start_service("serve", cmd, env=env, log=logs / "serve.log", port=settings.stack_serve_port, health_url=f"{serve_url}/health", marker="serve")

    if serve or "serve" in state.services:
        keep_or_start("serve", start_serve)
        state.urls["serve"] = serve_url
        state.save()
    _write_env_file(root, state)
    return state


def _free_or_fail_cb(settings: TaxiflowSettings):
    return lambda name, port: _free_or_fail(settings, name, port, "STACK_POSTGRES_PORT")


def _ensure_bucket(endpoint: str, bucket: str, aws_env: dict[str, str]) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
        region_name=aws_env["AWS_DEFAULT_REGION"],
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


def _ensure_work_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def _ensure_zombie_automation(api_url: str) -> None:
    """A run whose heartbeats stop (worker or process killed) is marked Crashed, not left Running forever."""
    import httpx

    name = "crash-zombie-flow-runs"
    existing = httpx.post(f"{api_url}/automations/filter", json={"automations": {"name": {"any_": [name]}}}, timeout=10).json()
    if existing:
        return
    automation = {
        "name": name,
        "description": "Prefect 3 zombie detection: flow runs that stop sending heartbeats are Crashed.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": [
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            ],
            "for_each": ["prefect.resource.id"],
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "threshold": 1,
            "within": ZOMBIE_AFTER_S,
        },
        "actions": [
            {"type": "change-flow-run-state", "state": "CRASHED", "message": f"No heartbeat for {ZOMBIE_AFTER_S} s: the flow run's process or its worker died."}
        ],
    }
    response = httpx.post(f"{api_url}/automations/", json=automation, timeout=10)
    if response.status_code >= 300:
        raise PlatformError(f"creating the {name} automation failed: HTTP {response.status_code} {response.text[:500]}")


def _upload_months(settings: TaxiflowSettings, months: list[tuple[str, str]], say) -> None:
    from prefect_aws import S3Bucket

    from taxiflow.core.schema import tlc_file_name
    from taxiflow.io.blocks import load_block

    bucket = load_block(S3Bucket, settings.s3_block)
    for taxi, month in months:
        path = settings.data_dir / tlc_file_name(taxi, month)
        if not path.is_file():
            raise PlatformError(f"cannot upload {taxi} {month}: {path.resolve()} not found (set TAXIFLOW_DATA_DIR)")
        bucket.upload_from_path(path, tlc_file_name(taxi, month))
        say(f"  uploaded {path.name} -> s3://{settings.stack_bucket}/trip-data/")


def _write_env_file(root: Path, state: StackState) -> Path:
    """`source` it (or `taxiflow stack env`) to point the CLI, flows and Prefect at the stack."""
    env_file = root / "stack.env"
    env_file.write_text(f"export PREFECT_API_URL={state.urls['prefect_api']}\nexport MLFLOW_TRACKING_URI={state.urls['mlflow']}\n")
    return env_file


def stack_down(settings: TaxiflowSettings, *, say=print) -> list[str]:
    """Stop the stack's services, and the local Prefect server runs keep warm when there is no stack."""
    from taxiflow.platform.local_prefect import stop_local_server
    from taxiflow.platform.warm_runner import runner_dir, stop_warm_runners

    state = StackState.load(settings.stack_dir() / "stack.json")
    stopped = []
    for runner_pid in stop_warm_runners(runner_dir(settings)):
        stopped.append("warm-runner")
        say(f"  warm runner stopped (pid {runner_pid})")
    if (pid := stop_local_server(settings)) is not None:
        stopped.append("local-prefect")
        say(f"  local Prefect server stopped (pid {pid})")
    for name in reversed(ORDER):
        service = state.services.get(name)
        if service is None:
            continue
        if stop_service(service):
            stopped.append(name)
            say(f"  {name:<9}stopped (pid {service.pid})")
        del state.services[name]
        state.save()
    if not stopped:
        say("Nothing to stop: the stack is not running (nor a local Prefect server or a warm runner).")
    state.path.unlink(missing_ok=True)
    return stopped


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def stack_checks(settings: TaxiflowSettings) -> list[Check]:
    """What `status` reports: each process, then the doctor's end-to-end checks."""
    import httpx

    from taxiflow.platform.local_prefect import local_server_status
    from taxiflow.platform.warm_runner import runner_dir, warm_runners

    state = StackState.load(settings.stack_dir() / "stack.json")
    checks: list[Check] = []
    for runner in warm_runners(runner_dir(settings)):
        ready = "ready" if runner.ready else "importing"
        detail = f"pid {runner.pid}, {ready}; {runner.runs} run(s) now; stops after {runner.idle_s:.0f} s without runs; log: {runner.log}"
        checks.append(Check("warm runner", True, detail))
    if (local := local_server_status(settings)) is not None:
        detail = f"{local.api_url.removesuffix('/api')} (pid {local.pid}; {local.runs} run(s) using it; stops after {local.idle_s:.0f} s without runs)"
        checks.append(Check("local prefect", local.healthy, detail if local.healthy else f"DOWN: {detail}; log: {local.log}"))
    if not state.services:
        return [*checks, Check("stack", False, f"not running (no {state.path})")]
    for name in ORDER:
        if (svc := state.services.get(name)) is not None:
            where = f"pid {svc.pid}" + (f", {svc.health_url}" if svc.health_url else "")
            checks.append(Check(name, is_healthy(svc), where if is_healthy(svc) else f"DOWN ({where}); log: {svc.log}"))
    api, mlflow_url, s3_url = state.urls.get("prefect_api"), state.urls.get("mlflow"), state.urls.get("s3")

    def api_url() -> str:
        if api is None:
            raise PlatformError(f"{state.path} records no Prefect API URL")
        return api

    def probe(name: str, fn) -> None:
        try:
            ok, detail = fn()
        except Exception as exc:  # noqa: BLE001 - a check that can't run is a failed check, with its reason
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append(Check(name, ok, detail))

    probe("api", lambda: (httpx.get(f"{api}/health", timeout=3).status_code == 200, api))
    pool_url = f"{api}/work_pools/{settings.work_pool}"
    probe("work pool", lambda: (httpx.get(pool_url, timeout=3).status_code == 200, settings.work_pool))

    def worker_polls():
        fresh = polling_workers(api_url(), settings.work_pool)
        return bool(fresh), f"{len(fresh)} worker(s) polling {settings.work_pool}" if fresh else f"no worker has polled {settings.work_pool} in 90 s"

    probe("worker polls", worker_polls)
    probe("mlflow", lambda: (httpx.get(f"{mlflow_url}/health", timeout=3).status_code == 200, mlflow_url))

    def blocks():
        names = {d["name"] for d in httpx.post(f"{api}/block_documents/filter", json={}, timeout=3).json()}
        missing = {"taxi-aws", settings.s3_block} - names
        return not missing, "taxi-aws, " + settings.s3_block if not missing else f"missing: {', '.join(sorted(missing))}"

    probe("blocks", blocks)

    def bucket():
        os.environ["PREFECT_API_URL"] = api_url()
        from prefect_aws import S3Bucket

        from taxiflow.io.blocks import load_block

        block = load_block(S3Bucket, settings.s3_block)
        block.credentials.get_s3_client().head_bucket(Bucket=block.bucket_name)
        return True, f"s3://{block.bucket_name} at {s3_url}"

    probe("bucket", bucket)
    if (serve_url := state.urls.get("serve")) and "serve" in state.services:

        def served_model():
            model = httpx.get(f"{serve_url}/model", timeout=3).json()
            if model["model"] is None:
                why = f"; refused v{model['refused']['version']}: {model['refused']['reason']}" if model["refused"] else ""
                return True, f"{serve_url}: no model loaded yet (waiting for {model['model_name']}@{model['alias']}{why})"
            return True, f"{serve_url}: {model['model_name']} v{model['model']['version']} (@{model['alias']})"

        probe("served model", served_model)
    return checks


def polling_workers(api_url: str, pool: str, *, within_s: float = 90) -> list[str]:
    """Names of workers whose last poll of `pool` is recent."""
    import httpx

    workers = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=3).json()
    now = dt.datetime.now(dt.UTC)
    return [
        w["name"]
        for w in workers
        if w.get("last_heartbeat_time") and now - dt.datetime.fromisoformat(w["last_heartbeat_time"]) < dt.timedelta(seconds=within_s)
    ]


def wait_for_worker(api_url: str, pool: str, worker: ServiceProcess, timeout_s: float = 60) -> bool:
    """True once the worker we started polls the pool (it registers on its first poll)."""
    started = dt.datetime.fromtimestamp(worker.started_at, dt.UTC)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_running(worker):
        if polling_workers(api_url, pool, within_s=(dt.datetime.now(dt.UTC) - started).total_seconds() + 5):
            return True
        time.sleep(0.5)
    return False
