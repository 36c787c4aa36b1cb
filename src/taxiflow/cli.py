"""The `taxiflow` command. Arguments are checked before Prefect is imported, so mistakes fail fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from taxiflow.cli_requests import add_request_options, option_names, request_values
from taxiflow.core.errors import InvalidArgumentError, TaxiflowError
from taxiflow.core.months import parse_month_range
from taxiflow.core.request import BackfillRequest, ScoreRequest, TrainRequest, TuneRequest, validated_request
from taxiflow.core.schema import TAXI_TYPES
from taxiflow.jobs.notify import add_notify_parser, run_notify_command

if TYPE_CHECKING:
    from pydantic import BaseModel

    from taxiflow.io.month_cache import MonthCache
    from taxiflow.platform.local_prefect import LocalServer
    from taxiflow.settings import TaxiflowSettings

# Defaults a user's environment can override. Telemetry calls fail offline and only add noise.
# Without a server Prefect starts a temporary one, and on a new PREFECT_HOME it first migrates a new
# database: ~19 s on 2 cores, against Prefect's 20 s limit, so a first `taxiflow train` could fail.
_DEFAULT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # MLflow draws a progress bar per artifact download when tqdm is installed (Optuna brings it): noise here.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_FLOW_STARTED = False  # an error after this came from inside a flow run: its traceback is in Prefect's logs
IN_WARM_RUNNER = False  # this process is a warm runner's child (platform/warm_runner.py): the imports were done before

# Options spelled differently from their request field (kept from earlier releases).
TRAIN_OPTION_NAMES = {"experiment_name": "--experiment", "promotion_reason": "--reason", "collapse_duplicates": "--no-collapse-duplicates"}
SCORE_OPTION_NAMES = {"experiment_name": "--experiment"}
TUNE_OPTION_NAMES = {
    "experiment_name": "--experiment",
    "space_file": "--space",
    "timeout_s": "--timeout",
    "pruning": "--no-pruning",
    "train_best": "--no-train-best",
}
WARM_COMMANDS = frozenset({"train", "score", "backfill", "tune"})  # the commands that import the flows (platform/warm_runner.py)
BACKFILL_OPTION_NAMES = {"from_month": "--from", "to_month": "--to", "experiment_name": "--experiment", "collapse_duplicates": "--no-collapse-duplicates"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taxiflow", description="NYC taxi trip-duration training pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks (default: taxiflow's messages only)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, evaluate and register a model (one Prefect flow run)")
    add_request_options(train, TrainRequest, TRAIN_OPTION_NAMES, required=("train_month", "val_month"))
    train.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
    train.add_argument("--require-promotion", action="store_true", help="exit 3 when the run completes but its model does not become champion (promote auto)")
    train.add_argument("--json", action="store_true", help="print one JSON object with the run's summary")

    backfill = sub.add_parser("backfill", help="train every consecutive pair of months in a range, gated in month order (one parent flow run)")
    add_request_options(backfill, BackfillRequest, BACKFILL_OPTION_NAMES, required=("from_month", "to_month"))
    backfill.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
    backfill.add_argument("--json", action="store_true", help="print one JSON object: each pair's status, RMSE, version, promoted")

    tune = sub.add_parser("tune", help="search XGBoost's parameters on a month pair (Optuna; resumable), then train the best through the gate")
    add_request_options(tune, TuneRequest, TUNE_OPTION_NAMES, required=("train_month", "val_month"))
    tune.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
    tune.add_argument(
        "--json", action="store_true", help="print one JSON object: the study, trial counts, the top trials, the best params file, the trained model"
    )

    models = sub.add_parser("models", help="the registered model's versions and its champion").add_subparsers(dest="models_command", required=True)
    for name, help_text in (
        ("ls", "versions, aliases, RMSE, months, gate decision"),
        ("promote", "make VERSION the champion (checks that it loads and predicts first)"),
        ("rollback", "give `champion` back to the version that held it before"),
    ):
        command = models.add_parser(name, help=help_text)
        if name == "promote":
            command.add_argument("version")
        if name in ("promote", "rollback"):
            command.add_argument("--reason", required=name == "promote", help="why (recorded on the version)")
        command.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
        command.add_argument("--model-name", help="registered model name (default nyc-taxi-duration)")
        if name == "ls":
            command.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="get and inspect TLC months").add_subparsers(dest="data_command", required=True)
    fetch = data.add_parser("fetch", help="download and verify months into the local cache")
    fetch.add_argument("--taxi", choices=TAXI_TYPES, default="green")
    fetch.add_argument("--months", required=True, help="YYYY-MM, YYYY-MM..YYYY-MM or a comma list")
    fetch.add_argument("--source", choices=("tlc", "s3"), default="tlc")
    fetch.add_argument("--tlc-base-url", help="base URL of TLC-named files (default: the TLC's CDN)")
    fetch.add_argument("--s3-block", help="prefect-aws S3Bucket block for --source s3 (default taxi-data)")
    fetch.add_argument("--refresh", action="store_true", help="fetch again even if cached")
    load_sql = data.add_parser(
        "load-sql", help="load months into PostgreSQL (TAXIFLOW_POSTGRES_URL or the taxi-postgres Secret block), one transaction per month"
    )
    load_sql.add_argument("--taxi", choices=TAXI_TYPES, default="green")
    load_sql.add_argument("--months", required=True, help="YYYY-MM, YYYY-MM..YYYY-MM or a comma list")
    load_sql.add_argument("--source", choices=("auto", "local", "tlc", "s3"), default="auto", help="where the months come from (as for train)")
    load_sql.add_argument("--data-dir", help="directory of TLC-named parquet files (default ./data, or TAXIFLOW_DATA_DIR)")
    load_sql.add_argument("--tlc-base-url", help="base URL of TLC-named files (default: the TLC's CDN)")
    load_sql.add_argument("--s3-block", help="prefect-aws S3Bucket block for --source s3 (default taxi-data)")
    listing = data.add_parser("ls", help="what the cache holds")
    listing.add_argument("--json", action="store_true")
    blocks = data.add_parser("s3-blocks", help="save the AwsCredentials (from AWS_* env) and S3Bucket blocks")
    blocks.add_argument("--bucket", required=True)
    blocks.add_argument("--folder", default="", help="key prefix of the month files in the bucket")
    blocks.add_argument("--endpoint-url", help="S3-protocol endpoint (e.g. a local moto server)")
    blocks.add_argument("--block", default="taxi-data", help="S3Bucket block name")

    cache = sub.add_parser("cache", help="the local caches: downloaded months and prepared trips").add_subparsers(dest="cache_command", required=True)
    cache_ls = cache.add_parser("ls", help="every entry, its size and last use, least recently used first")
    cache_ls.add_argument("--json", action="store_true")
    prune = cache.add_parser("prune", help="remove entries unused for a while, or the least recently used beyond a size")
    prune.add_argument("--max-size", help="keep at most this much, e.g. 2GB or 500MB (least recently used go first)")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="remove entries unused for more than DAYS days")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")

    stack = sub.add_parser("stack", help="the local platform: Prefect server + worker, MLflow server, S3 server").add_subparsers(
        dest="stack_command", required=True
    )
    up = stack.add_parser("up", help="start what isn't running (idempotent), create blocks and the work pool, start a worker")
    up.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="metadata database of both servers")
    up.add_argument("--artifacts", choices=("local", "s3"), default="local", help="where the MLflow server keeps artifacts")
    up.add_argument("--serve", action="store_true", help="also start the prediction service (`taxiflow serve`, port 8000) on the stack's registry")
    up.add_argument(
        "--upload", metavar="TAXI:MONTHS", action="append", default=[], help="upload months from the data dir to the bucket, e.g. green:2023-01..2023-02"
    )
    stack.add_parser("status", help="what is up, where, and what is unhealthy (exit 1 if anything is)")
    stack.add_parser("down", help="stop exactly the processes `up` started, worker first")
    stack.add_parser("env", help="print shell exports pointing the CLI and Prefect at the stack")
    sub.add_parser("deploy", help="register the deployments in prefect.yaml with the running Prefect server")
    score = sub.add_parser("score", help="score a month with the champion (or a version): predictions parquet + drift check (one Prefect flow run)")
    add_request_options(score, ScoreRequest, SCORE_OPTION_NAMES, required=("month",))
    score.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
    score.add_argument("--json", action="store_true", help="print one JSON object: rows scored, output, model version, RMSE, drift")
    serve = sub.add_parser("serve", help="the prediction service: the registry's champion behind an HTTP API (FastAPI)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; TAXIFLOW_SERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; TAXIFLOW_SERVE_PORT)")
    serve.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
    serve.add_argument("--model-name", help="registered model name (default nyc-taxi-duration)")
    serve.add_argument("--alias", help="the alias to load and follow (default champion)")
    serve.add_argument("--poll-s", type=float, help="seconds between checks whether the alias moved (default 10)")
    serve.add_argument("--max-rides", type=int, help="most rides per request (default 10000)")
    serve.add_argument("--max-body-bytes", type=int, help="largest request body (default 4 MiB)")
    serve.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs throughput)")
    add_notify_parser(sub)
    return parser


def _stack(args: argparse.Namespace) -> int:
    from taxiflow.platform.stack import StackState, stack_checks, stack_down, stack_up
    from taxiflow.settings import load_settings

    settings = load_settings()
    if args.stack_command == "up":
        uploads = []
        for spec in args.upload:
            taxi, _, months = spec.partition(":")
            if taxi not in TAXI_TYPES or not months:
                raise InvalidArgumentError(f"--upload: expected TAXI:MONTHS like green:2023-01..2023-02, got {spec!r}")
            uploads += [(taxi, str(m)) for m in parse_month_range(months, argument="--upload")]
        state = stack_up(settings, db=args.db, artifacts=args.artifacts, upload=uploads, serve=args.serve)
        print(
            f"\nPrefect UI:  {state.urls['prefect_ui']}\nMLflow UI:   {state.urls['mlflow']}\nS3 endpoint: {state.urls['s3']} (bucket {settings.stack_bucket})"
        )
        if "serve" in state.urls:
            print(f"Predictions: {state.urls['serve']}/predict (docs at {state.urls['serve']}/docs)")
        print('Point your shell at it: eval "$(taxiflow stack env)"   then: taxiflow deploy')
        return 0
    if args.stack_command == "down":
        stack_down(settings)
        return 0
    if args.stack_command == "env":
        state = StackState.load(settings.stack_dir() / "stack.json")
        if not state.urls:
            raise InvalidArgumentError("the stack is not running: `taxiflow stack up` first")
        print(f"export PREFECT_API_URL={state.urls['prefect_api']}\nexport MLFLOW_TRACKING_URI={state.urls['mlflow']}")
        return 0
    checks = stack_checks(settings)
    for check in checks:
        print(f"{'ok ' if check.ok else 'BAD'}  {check.name:<15}{check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def _deploy(args: argparse.Namespace) -> int:
    import subprocess

    from taxiflow.platform.stack import BIN, REPO_ROOT, StackState
    from taxiflow.settings import load_settings

    settings = load_settings()
    env = dict(os.environ, TAXIFLOW_CODE_DIR=str(REPO_ROOT))
    if "PREFECT_API_URL" not in env:
        state = StackState.load(settings.stack_dir() / "stack.json")
        if not state.urls:
            raise InvalidArgumentError("no Prefect server: set PREFECT_API_URL or run `taxiflow stack up`")
        env["PREFECT_API_URL"] = state.urls["prefect_api"]
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
        raise TaxiflowError(f"prefect deploy failed (exit {result.returncode}) against {env['PREFECT_API_URL']}")
    print(
        f"Deployed to {env['PREFECT_API_URL']}: train/taxi-local-data, train/taxi-s3-data, train-monthly/taxi-monthly, score/taxi-score, backfill/taxi-backfill"
    )
    print("Run one: prefect deployment run 'train/taxi-local-data' -p train_month=2023-01 -p val_month=2023-02")
    return 0


def _reuse_running_stack(settings: TaxiflowSettings) -> bool:
    """Without PREFECT_API_URL, use the local stack's Prefect server if it is up."""
    from taxiflow.platform.processes import is_healthy
    from taxiflow.platform.stack import StackState

    state = StackState.load(settings.stack_dir() / "stack.json")
    prefect = state.services.get("prefect")
    if prefect is not None and is_healthy(prefect, timeout_s=1.0):
        os.environ["PREFECT_API_URL"] = state.urls["prefect_api"]
        print(f"taxiflow: using the running stack's Prefect server at {state.urls['prefect_api']}", file=sys.stderr)
        return True
    return False


def _connect_prefect() -> LocalServer | None:
    """Point this run at a Prefect server: PREFECT_API_URL, else the stack's, else the local one kept warm between runs.

    The local server is started (when none runs) without waiting: it comes up while the flow's code
    imports; the caller waits for it (`wait_ready`) just before the flow starts.
    """
    server = _choose_prefect_server()
    _use_warm_prefect()
    return server


def _use_warm_prefect() -> None:
    """Prefect imported before this run chose its server (a warm runner's child): rebuild its settings and logging from this environment."""
    if "prefect.context" not in sys.modules:
        return  # imported after this, by the flow's module: it reads the environment then
    import prefect.context
    import prefect.logging.configuration

    prefect.context.refresh_global_settings_context()
    prefect.logging.configuration.setup_logging(incremental=False)


def _choose_prefect_server() -> LocalServer | None:
    if "PREFECT_API_URL" in os.environ:
        return None
    from taxiflow.settings import load_settings

    settings = load_settings()  # once per run: the stack's state and the local server both need it
    if _reuse_running_stack(settings):
        return None
    if settings.local_prefect_idle_s <= 0:
        from taxiflow.io.prefect_database import ensure_local_prefect_database

        ensure_local_prefect_database()  # Prefect's temporary server, inside this run
        return None
    from taxiflow.platform.local_prefect import lease_local_server

    server = lease_local_server(settings, settings.local_prefect_idle_s)
    os.environ["PREFECT_API_URL"] = server.api_url
    if server.started_now:
        print(
            f"taxiflow: starting a local Prefect server for this and later runs: UI at {server.ui_url} "
            f"(stops after {settings.local_prefect_idle_s:.0f} s without runs, or with `taxiflow stack down`; "
            "if its Prefect database is new, it is set up first, ~20 s, once)",
            file=sys.stderr,
        )
    return server


def _backfill(args: argparse.Namespace) -> int:
    request = validated_request(BackfillRequest, request_values(args, BackfillRequest), option_names=option_names(BackfillRequest, BACKFILL_OPTION_NAMES))
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri  # by environment, not a flow parameter: URIs can carry credentials
    _check_tracking_store(request.pair_request(request.pairs()[0]))
    if request.dry_run:
        return _print_backfill_plan(request, args.json)
    from taxiflow.core.backfill import BackfillFailedError

    try:
        result = _run_flow("taxiflow.flows.backfill", "backfill", request)
    except BackfillFailedError as exc:
        print(json.dumps(exc.result) if args.json else _describe_backfill(exc.result))
        raise
    print(json.dumps(result) if args.json else _describe_backfill(result))
    return 0


def _print_backfill_plan(request: BackfillRequest, as_json: bool) -> int:
    """The plan, without a flow run: nothing is trained, downloaded or registered."""
    from taxiflow.settings import load_settings

    if request.mode == "failed":
        _connect_prefect()  # the pairs' last runs are in Prefect's record (before Prefect is imported: it reads the URL then)
    from taxiflow.flows.backfill import plan_backfill
    from taxiflow.flows.train import tracking_store

    settings = load_settings()
    store = tracking_store(settings, request.pair_request(request.pairs()[0]).experiment_name)
    plans, _ = plan_backfill(request, settings, store)
    if as_json:
        print(json.dumps({"dry_run": True, "plan": [{"pair": str(p.pair), "runs": p.run, "reason": p.reason} for p in plans]}))
    else:
        for p in plans:
            print(f"{'run ' if p.run else 'skip'}  {p.pair}  {p.reason}")
        print(f"dry run: {sum(p.run for p in plans)} of {len(plans)} pair(s) would run; nothing was changed")
    return 0


def _describe_backfill(result: dict) -> str:
    lines = [f"Backfill {result['taxi']} {result['from_month']}..{result['to_month']} (mode {result['mode']}):"]
    for row in result["pairs"]:
        rmse = f"RMSE {row['rmse']:.4f}" if row["rmse"] is not None else ""
        version = f"v{row['version']}" if row["version"] else ""
        lines.append(f"  {row['pair']}  {row['status']:<10} {rmse:<12} {version:<5} {'champion' if row['promoted'] else '':<8} {row['detail']}")
    lines.append(f"  champion: v{result['champion_version']}" if result["champion_version"] else "  no champion")
    return "\n".join(lines)


def _check_tracking_store(request: TrainRequest) -> None:
    """Fail in seconds on a tracking store registration could not use, before Prefect starts (the flow checks again: deployments)."""
    from taxiflow.io.tracking import TrackingStore
    from taxiflow.settings import load_settings

    settings = load_settings()
    store = TrackingStore(
        settings.resolved_tracking_uri(), request.experiment_name or settings.experiment_name, local_artifact_root=settings.local_artifact_root()
    )
    store.preflight(request.model_name or settings.model_name)


def _run_flow(module: str, name: str, request: BaseModel) -> dict:
    """Run a flow with the request's values, on the Prefect server `_connect_prefect` chooses."""
    import importlib

    local_server = _connect_prefect()
    if not IN_WARM_RUNNER:
        _start_warm_runner()
    flow = getattr(importlib.import_module(module), name)  # imported once the server is chosen: Prefect reads it at import
    if local_server is not None:
        local_server.wait_ready()
    global _FLOW_STARTED
    _FLOW_STARTED = True
    return flow(**request.model_dump(exclude_unset=True))


def _start_warm_runner() -> None:
    """Later runs skip this run's imports: start a warm runner for them (none runs for this code and environment)."""
    from taxiflow.platform.warm_runner import ensure_warm_runner, runner_dir, runner_key
    from taxiflow.settings import load_settings

    settings = load_settings()
    if settings.warm_runner_idle_s <= 0:
        return
    if ensure_warm_runner(runner_dir(settings), runner_key(), settings.warm_runner_idle_s) is not None:
        print(
            f"taxiflow: starting a warm runner: later train/score/backfill/tune runs skip ~3 s of imports "
            f"(stops after {settings.warm_runner_idle_s:.0f} s without runs, or with `taxiflow stack down`)",
            file=sys.stderr,
        )


def _train(args: argparse.Namespace) -> int:
    # Validate everything the user typed before paying for Prefect's start-up.
    request = validated_request(TrainRequest, request_values(args, TrainRequest), option_names=option_names(TrainRequest, TRAIN_OPTION_NAMES))
    if args.tracking_uri:
        # Passed by environment, not as a flow parameter: URIs can carry credentials.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri

    _check_params_file(request)
    _check_tracking_store(request)
    summary = _run_flow("taxiflow.flows.train", "train", request)
    if args.json:
        print(json.dumps(summary))
    else:
        print(_describe(summary))
    if args.require_promotion and request.promote == "auto" and not summary["promoted"]:
        print(f"taxiflow: v{summary['model_version']} was not promoted ({summary['gate']}): {summary['decision_reason']}", file=sys.stderr)
        return 3
    return 0


def _check_params_file(request: TrainRequest) -> None:
    """`--params`: the file exists and holds valid parameters, before Prefect starts (the flow reads it again)."""
    if request.params:
        from taxiflow.io.tuning import load_params_file
        from taxiflow.settings import load_settings

        path, values = load_params_file(request.params, request.taxi, load_settings())
        request.with_params(values)  # in TrainRequest's bounds


def _tune(args: argparse.Namespace) -> int:
    request = validated_request(TuneRequest, request_values(args, TuneRequest), option_names=option_names(TuneRequest, TUNE_OPTION_NAMES))
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri  # by environment, not a flow parameter: URIs can carry credentials
    if request.space_file:
        from taxiflow.io.tuning import load_search_space

        load_search_space(request.space_file)  # a bad file fails now, naming the key
    _check_tracking_store(request.best_train_request("best"))
    summary = _run_flow("taxiflow.flows.tune", "tune", request)
    print(json.dumps(summary) if args.json else _describe_tune(summary))
    return 0


def _describe_tune(summary: dict) -> str:
    counts = summary["trials"]
    lines = [
        f"Study {summary['study']}: {summary['trials_run_now']} trial(s) now; "
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed in all"
    ]
    for row in summary["top"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        lines.append(f"  trial {row['number']:>3}  RMSE {row['rmse']:.4f}  {params}")
    lines.append(f"best parameters: {summary['best_params_file']} (taxiflow train --params best)")
    if summary["trained"]:
        lines.append(_describe(summary["trained"]))
    return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
    # Validate everything the user typed before paying for Prefect's start-up.
    request = validated_request(ScoreRequest, request_values(args, ScoreRequest), option_names=option_names(ScoreRequest, SCORE_OPTION_NAMES))
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri  # by environment, not a flow parameter: URIs can carry credentials
    _check_scoring_model(request)
    summary = _run_flow("taxiflow.flows.score", "score", request)
    if args.json:
        print(json.dumps(summary))
    else:
        print(_describe_score(summary))
    return 0


def _check_scoring_model(request: ScoreRequest) -> None:
    """In seconds, before Prefect starts: the tracking store answers and the model to score with exists (the flow checks again)."""
    from taxiflow.io.registry import ModelRegistry
    from taxiflow.io.tracking import TrackingStore
    from taxiflow.jobs.scoring import resolve_version
    from taxiflow.settings import load_settings

    settings = load_settings()
    store = TrackingStore(
        settings.resolved_tracking_uri(), request.experiment_name or settings.experiment_name, local_artifact_root=settings.local_artifact_root()
    )
    model_name = request.model_name or settings.model_name
    store.preflight(model_name)
    resolve_version(ModelRegistry(store, model_name), request.model_version)


def _describe_score(summary: dict) -> str:
    drift = summary["drift"]
    rmse = f"RMSE {summary['rmse']:.4f} min on {summary['rows_with_actuals']:,} rides with actual durations" if summary["rmse"] is not None else "no actuals"
    lines = [
        f"Scored {summary['rows_scored']:,} of {summary['rows_read']:,} {summary['taxi']} {summary['month']} rides "
        f"with {summary['model_name']} v{summary['model_version']} ({rmse}).",
        f"  predictions: {summary['output']}",
    ]
    if drift.get("dataset_drift") is None:
        lines.append(f"  drift: not computed ({drift.get('not_computed')})")
    else:
        verdict = "DATASET DRIFT" if drift["dataset_drift"] else "no dataset drift"
        columns = ", ".join(f"{name} {c['score']:.4f}{' (drifted)' if c['drifted'] else ''}" for name, c in drift["columns"].items())
        share = f"{drift['share_drifted']:.0%} of columns drifted (alert at {drift['drift_share']:.0%})"
        lines.append(f"  drift vs {summary['reference_month']}: {verdict}, {share}: {columns}")
    lines.append(f"  report: Prefect artifact 'drift-report', MLflow run {summary['mlflow_run_id']} in {summary['tracking_uri']}")
    return "\n".join(lines)


def _models(args: argparse.Namespace) -> int:
    from taxiflow.jobs.models import list_versions, promote_version, rollback_champion
    from taxiflow.settings import load_settings

    settings = load_settings()
    tracking_uri = args.tracking_uri or settings.resolved_tracking_uri()
    model_name = args.model_name or settings.model_name
    if args.models_command == "ls":
        rows = list_versions(settings, tracking_uri, model_name)
        if args.json:
            print(json.dumps(rows))
            return 0
        print(f"{'version':>7}  {'aliases':<21}{'rmse':>8}  {'train':<8}{'val':<8}{'gate':<14}{'state':<10}created")
        for r in rows:
            rmse = f"{r['rmse']:.4f}" if r["rmse"] is not None else ""
            print(
                f"{r['version']:>7}  {','.join(r['aliases']):<21}{rmse:>8}  {r['train_month'] or '':<8}{r['val_month'] or '':<8}"
                f"{r['gate'] or '':<14}{r['state'] or '':<10}{r['created']}"
            )
        return 0
    if args.models_command == "promote":
        outcome = promote_version(settings, tracking_uri, model_name, args.version, reason=args.reason)
    else:
        outcome = rollback_champion(settings, tracking_uri, model_name, reason=args.reason)
    print(outcome.text)
    if outcome.moved:
        from taxiflow.core.messages import LifecycleEvent
        from taxiflow.jobs.notify import send_event

        send_event(
            LifecycleEvent(
                kind="promoted",
                model_name=model_name,
                challenger_version=outcome.champion,
                champion_version=outcome.previous,
                gate="forced",
                gate_reason=outcome.text,
            ),
            settings.notify_targets.split(),
        )
    return 0


# `taxiflow serve`'s options are settings (TAXIFLOW_SERVE_*, ...): a flag overrides its setting.
SERVE_OPTION_NAMES = {
    "serve_host": "--host",
    "serve_port": "--port",
    "serve_alias": "--alias",
    "serve_poll_s": "--poll-s",
    "serve_max_rides": "--max-rides",
    "serve_max_body_bytes": "--max-body-bytes",
    "tracking_uri": "--tracking-uri",
    "model_name": "--model-name",
}


def _serve(args: argparse.Namespace) -> int:
    from taxiflow.serving.service import ServeOptions, serve
    from taxiflow.settings import TaxiflowSettings, load_settings

    flags = {field: getattr(args, option.removeprefix("--").replace("-", "_")) for field, option in SERVE_OPTION_NAMES.items()}
    # Checked by the settings' own constraints, so a flag and its environment variable accept the same values.
    values = load_settings().model_dump() | {field: value for field, value in flags.items() if value is not None}
    settings = validated_request(TaxiflowSettings, values, option_names=SERVE_OPTION_NAMES)
    serve(ServeOptions.from_settings(settings, access_log=args.access_log), settings)
    return 0


def _data(args: argparse.Namespace) -> int:
    from taxiflow.io.month_cache import MonthCache
    from taxiflow.settings import load_settings

    settings = load_settings()
    cache = MonthCache(settings.cache_dir())
    if args.data_command == "ls":
        entries = cache.entries()
        if args.json:
            from dataclasses import asdict

            print(json.dumps([asdict(e) for e in entries]))
            return 0
        print(f"{'taxi':<7}{'month':<9}{'rows':>12}{'MB':>9}  {'sha256':<18}source")
        for e in entries:
            print(f"{e.taxi:<7}{e.month:<9}{e.num_rows:>12,}{e.size_bytes / 1e6:>9.1f}  {e.sha256[:16]:<18}{e.origin}")
        print(f"{len(entries)} cached month(s) in {cache.root}")
        return 0
    if args.data_command == "s3-blocks":
        from taxiflow.io.s3_blocks import save_s3_blocks

        save_s3_blocks(args.bucket, bucket_block=args.block, bucket_folder=args.folder, endpoint_url=args.endpoint_url)
        print(f"saved blocks: aws-credentials/taxi-aws, s3-bucket/{args.block} (bucket {args.bucket})")
        return 0

    if args.data_command == "load-sql":
        return _load_sql(args, settings, cache)
    from taxiflow.flows.train import month_source
    from taxiflow.jobs.data import fetch_months

    months = parse_month_range(args.months)
    source = month_source(args.source, settings, args.tlc_base_url, args.s3_block)
    if source is None:
        raise InvalidArgumentError("no download source: --tlc-base-url is empty")
    outcomes = fetch_months(args.taxi, months, source, cache, refresh=args.refresh)
    done = {o.month: f"{o.file.num_rows:,} rows, sha256 {o.file.sha256[:16]}, {o.file.path}" for o in outcomes if o.file}
    return _report_months(args.taxi, [(o.month, done.get(o.month), o.error) for o in outcomes])


def _report_months(taxi: str, results: list[tuple[str, str | None, str | None]]) -> int:
    """One line per month (month, what was done, or why it failed); exit 1 naming the months that failed."""
    for month, done, error in results:
        print(f"ok      {taxi} {month}: {done}" if error is None else f"FAILED  {taxi} {month}: {error}")
    failed = [month for month, _, error in results if error is not None]
    if failed:
        print(f"taxiflow: error: {len(failed)} of {len(results)} month(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str, *, argument: str) -> int:
    """`2GB`, `500MB`, `0` -> bytes."""
    number, unit = text.strip().upper(), ""
    while number and number[-1].isalpha():
        number, unit = number[:-1], number[-1] + unit
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or value < 0:
        raise InvalidArgumentError(f"{argument}: expected a size like 2GB or 500MB, got {text!r}")
    return int(value * _SIZE_UNITS[unit])


def _cache(args: argparse.Namespace) -> int:
    import datetime as dt

    from taxiflow.jobs.cache import cache_items, prune_caches
    from taxiflow.settings import load_settings

    settings = load_settings()
    if args.cache_command == "ls":
        items = cache_items(settings)
        if args.json:
            print(json.dumps([item.row() for item in items]))
            return 0
        print(f"{'kind':<9}{'taxi':<7}{'month':<9}{'MB':>9}  {'last used':<17}detail")
        for item in items:
            used = dt.datetime.fromtimestamp(item.last_used, dt.UTC).strftime("%Y-%m-%d %H:%M")
            print(f"{item.kind:<9}{item.taxi:<7}{item.month:<9}{item.size_bytes / 1e6:>9.1f}  {used:<17}{item.detail}")
        print(f"{len(items)} entries, {sum(i.size_bytes for i in items) / 1e6:,.1f} MB in {settings.cache_dir()} and {settings.prepared_dir()}")
        return 0
    if args.max_size is None and args.older_than is None:
        raise InvalidArgumentError("cache prune: give --max-size SIZE, --older-than DAYS, or both")
    if args.older_than is not None and args.older_than < 0:
        raise InvalidArgumentError(f"--older-than: expected a number of days >= 0, got {args.older_than}")
    max_bytes = parse_size(args.max_size, argument="--max-size") if args.max_size is not None else None
    older_than_s = args.older_than * 86400 if args.older_than is not None else None
    removed, freed = prune_caches(settings, max_bytes=max_bytes, older_than_s=older_than_s, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for item in removed:
        print(f"{verb} {item.kind} {item.taxi} {item.month} ({item.size_bytes / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} entries, {freed / 1e6:,.1f} MB")
    return 0


def _load_sql(args: argparse.Namespace, settings: TaxiflowSettings, cache: MonthCache) -> int:
    from pathlib import Path

    from taxiflow.flows.train import month_source
    from taxiflow.io.trips_sql import postgres_url, trips_table
    from taxiflow.jobs.data import load_months_into_sql

    months = parse_month_range(args.months)
    url = postgres_url(settings.postgres_url, settings.postgres_secret_block)
    data_dir = Path(args.data_dir or settings.data_dir) if args.source in ("auto", "local") else None
    source = None if args.source == "local" else month_source(args.source, settings, args.tlc_base_url, args.s3_block)
    outcomes = load_months_into_sql(url, args.taxi, months, data_dir=data_dir, source=source, cache=cache)
    done = {o.month: f"{o.load.rows:,} rows into {trips_table(args.taxi)} (load {o.load.load_id})" for o in outcomes if o.load}
    return _report_months(args.taxi, [(o.month, done.get(o.month), o.error) for o in outcomes])


def _describe(summary: dict) -> str:
    lines = [
        f"Trained {summary['model']} on {summary['taxi']} {summary['train_month']} "
        f"({summary['rows_train']:,} of {summary['rows_train_read']:,} rows), "
        f"validated on {summary['val_month']} ({summary['rows_val']:,} of {summary['rows_val_read']:,} rows).",
        f"  validation RMSE {summary['rmse']:.4f} min, MAE {summary['mae']:.4f} min",
        f"  registered {summary['model_name']} version {summary['model_version']} ({summary['model_uri']})",
        f"  promotion gate: {summary['gate']}: {summary['decision_reason']}"
        + (f" (champion: v{summary['champion_version']})" if summary.get("champion_version") else " (no champion)"),
        f"  MLflow run {summary['run_id']} in {summary['tracking_uri']}",
        "  report: Prefect artifact 'duration-model-report'",
    ]
    if "intercept" in summary:
        lines.insert(2, f"  intercept {summary['intercept']:.4f}")
    if summary.get("cached"):
        lines[0] = f"Not trained again: v{summary['model_version']} was trained on identical inputs (--retrain to train anyway). " + lines[0]
    return "\n".join(lines)


def apply_default_env() -> None:
    for key, value in _DEFAULT_ENV.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    apply_default_env()
    # Retry notices from the download sources go to stderr; Prefect's own logging stays as Prefect sets it.
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("taxiflow").addHandler(handler)
    logging.getLogger("taxiflow").setLevel(logging.INFO)
    args = _build_parser().parse_args(argv)
    if not args.verbose and "PREFECT_LOGGING_CONFIG_PATH" not in os.environ:
        from taxiflow.console import quiet_mlflow_console, quiet_prefect_console

        quiet_prefect_console()
        quiet_mlflow_console()
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "score":
            return _score(args)
        if args.command == "backfill":
            return _backfill(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "data":
            return _data(args)
        if args.command == "stack":
            return _stack(args)
        if args.command == "deploy":
            return _deploy(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "models":
            return _models(args)
        if args.command == "notify":
            return run_notify_command(args)
    except InvalidArgumentError as exc:
        print(f"taxiflow: error: {exc}", file=sys.stderr)
        return 2
    except TaxiflowError as exc:
        if args.verbose:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        elif _FLOW_STARTED:
            print("taxiflow: the run failed; its full log, traceback included, is in the Prefect UI (or rerun with -v)", file=sys.stderr)
        print(f"taxiflow: error: {exc}", file=sys.stderr)
        return 1
    return 2


def _skip_interpreter_teardown(exit_code: list[int]) -> None:
    """The last exit handler of the `taxiflow` command (after Prefect's and MLflow's own).

    Once output and Prefect's log and event queues are flushed, nothing is left to do but free every
    module, which takes ~1 s with Prefect, MLflow and XGBoost loaded: exit without it.
    """
    flush_run_output()
    os._exit(exit_code[0] if exit_code else 1)


def flush_run_output() -> None:
    """Prefect's queued logs and events reach the API, and our output the terminal."""
    if "prefect" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=10)
    sys.stdout.flush()
    sys.stderr.flush()


def _run_in_warm_runner(argv: list[str]) -> int | None:
    """A flow command, handed to the warm runner for this code and environment if one runs: its exit code, else None."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is None or command not in WARM_COMMANDS or "-h" in argv or "--help" in argv:
        return None
    from taxiflow.platform.warm_runner import run_in_warm_runner, runner_dir, runner_key
    from taxiflow.settings import load_settings

    try:
        settings = load_settings()
    except InvalidArgumentError:
        return None  # `main` reports it
    if settings.warm_runner_idle_s <= 0:
        return None
    return run_in_warm_runner(argv, runner_dir(settings), runner_key())


def entry() -> None:
    """The console script: `main` (in the warm runner, if one runs), then a fast exit."""
    import atexit

    if (code := _run_in_warm_runner(sys.argv[1:])) is not None:
        sys.stdout.flush()
        os._exit(code)
    exit_code: list[int] = []
    atexit.register(_skip_interpreter_teardown, exit_code)  # registered first, so it runs last
    try:
        exit_code.append(main())
    except KeyboardInterrupt:
        exit_code.append(130)
    sys.exit(exit_code[0])


if __name__ == "__main__":
    entry()
