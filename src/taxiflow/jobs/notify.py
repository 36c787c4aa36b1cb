"""Model-lifecycle notifications: the `taxiflow notify` commands, and what flows call to tell people.

- `taxiflow notify webhook --name NAME [--allow-private-urls]`: save a Slack-style webhook block (URL from TAXIFLOW_WEBHOOK_URL)
- `taxiflow notify email --name NAME --server HOST --port N [--username U] [--smtp-type ...]`: save SMTP credentials
  (password from TAXIFLOW_SMTP_PASSWORD)
- `taxiflow notify test --target T [--target T2]`: send a test message to each target

From a flow: `send_event(event)` on the success path, and `notify_run_state` as the flow's
on_failure / on_crashed / on_cancellation hook. Targets come from TAXIFLOW_NOTIFY_TARGETS unless given.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.messages import DriftEvent, LifecycleEvent, render_message
from taxiflow.core.notification_targets import TARGET_FORMS, WEBHOOK_URL_ENV, check_block_name, parse_targets
from taxiflow.io.notifications import (
    SMTP_PASSWORD_ENV,
    SMTP_TYPES,
    TARGETS_ENV,
    Delivery,
    configured_targets,
    notify,
    save_email_block,
    save_webhook_block,
)

LOGGER = logging.getLogger("taxiflow.notifications")
DEFAULT_TIMEOUT_S = 5.0
_STATE_KINDS = {"COMPLETED": "completed", "FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled"}


# --- what flows call -----------------------------------------------------------------------------


def send_event(event: LifecycleEvent | DriftEvent, targets: Sequence[str] | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Delivery]:
    """Render `event` and send it to `targets` (default: TAXIFLOW_NOTIFY_TARGETS). Best-effort: never raises."""
    chosen = list(configured_targets() if targets is None else targets)
    if not chosen:
        return []
    try:
        subject, body = render_message(event)
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the run it reports on
        LOGGER.warning("notification not sent: the message could not be rendered (%s)", type(exc).__name__)
        return []
    return notify(chosen, subject, body, timeout_s=timeout_s)


def current_flow_run_url() -> str | None:
    """The Prefect UI page of the flow run this is called in (None outside a run, or with no UI URL known)."""
    try:
        from prefect.runtime import flow_run
        from prefect.utilities.urls import url_for

        run_id = flow_run.get_id()
        return (url_for("flow-run", obj_id=run_id) or None) if run_id else None
    except Exception:  # noqa: BLE001 - a link is a nicety
        return None


def event_from_flow_run(flow_run: Any, state: Any, job: str = "train") -> LifecycleEvent:
    """A failed / crashed / cancelled (or completed) train or score run, from what a Prefect state hook receives."""
    from prefect.utilities.urls import url_for

    params = dict(getattr(flow_run, "parameters", None) or {})
    state_type = getattr(getattr(state, "type", None), "value", "FAILED")
    kind = _STATE_KINDS.get(state_type, "failed")
    try:
        url = url_for("flow-run", obj_id=flow_run.id)
    except Exception:  # noqa: BLE001 - a link is a nicety
        url = None

    def text(name: str) -> str | None:
        value = params.get(name)
        return None if value is None else str(value)

    return LifecycleEvent(
        kind=kind,
        taxi=text("taxi"),
        train_month=text("train_month"),
        val_month=text("val_month"),
        job=job,
        month=text("month"),
        model_name=text("model_name"),
        flow_run_name=getattr(flow_run, "name", None),
        flow_run_url=url or None,
        error=(getattr(state, "message", None) or None) if kind != "completed" else None,
    )


def run_targets(flow_run: Any) -> list[str]:
    """The run's `notify` parameter if it set one, else TAXIFLOW_NOTIFY_TARGETS."""
    given = (dict(getattr(flow_run, "parameters", None) or {})).get("notify")
    return list(given) if given is not None else configured_targets()


def notify_run_state(flow: Any, flow_run: Any, state: Any) -> None:
    """A Prefect flow state hook (on_failure / on_crashed / on_cancellation): tell the run's targets. Never raises.

    Serves the `train` and `score` flows alike (the event says which, from the flow's name).
    """
    try:
        targets = run_targets(flow_run)
        if not targets:
            return
        job = "score" if getattr(flow, "name", None) == "score" else "train"
        deliveries = send_event(event_from_flow_run(flow_run, state, job), targets)
        _run_logger().info("notifications: %s", "; ".join(f"{'ok' if d.ok else 'FAILED'} {d.target}" for d in deliveries))
    except Exception as exc:  # noqa: BLE001 - a hook that raises only adds noise to a run that already failed
        LOGGER.warning("notification hook failed: %s", type(exc).__name__)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run
        return LOGGER


# --- the `taxiflow notify` commands ----------------------------------------------------------------


def add_notify_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `notify` command group to the `taxiflow` parser's subcommands."""
    notify_parser = subparsers.add_parser("notify", help="notification targets: save Prefect blocks, send a test message")
    group = notify_parser.add_subparsers(dest="notify_command", required=True)
    webhook = group.add_parser("webhook", help=f"save a Custom Webhook block posting Slack-style JSON to the URL in {WEBHOOK_URL_ENV} (kept as a secret)")
    webhook.add_argument("--name", required=True, help="block name (lowercase letters, digits, dashes); target: webhook:NAME")
    webhook.add_argument(
        "--allow-private-urls", action="store_true", help="allow a URL on a private or loopback address (Prefect refuses them by default here)"
    )
    email = group.add_parser("email", help=f"save an EmailServerCredentials block (password from {SMTP_PASSWORD_ENV})")
    email.add_argument("--name", required=True, help="block name (lowercase letters, digits, dashes); target: email:NAME:TO[,TO...]")
    email.add_argument("--server", required=True, help="SMTP host")
    email.add_argument("--port", type=int, required=True, help="SMTP port")
    email.add_argument("--username", help=f"SMTP login (then {SMTP_PASSWORD_ENV} must be set); also the From address if it is one")
    email.add_argument("--smtp-type", choices=SMTP_TYPES, default="STARTTLS", type=str.upper, help="connection security (default STARTTLS)")
    test = group.add_parser("test", help="send a test message to each target")
    test.add_argument("--target", action="append", required=True, help=f"{TARGET_FORMS} (repeatable)")
    test.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for all targets (default 10)")
    return notify_parser


def run_notify_command(args: argparse.Namespace) -> int:
    """Run `taxiflow notify ...`: 0 when done (every test target delivered), 1 when a test target failed."""
    if args.notify_command == "webhook":
        check_block_name(args.name)
        _use_prefect_api()
        save_webhook_block(args.name, allow_private_urls=args.allow_private_urls)
        print(f"saved block custom-webhook/{args.name} (URL from {WEBHOOK_URL_ENV}, stored as a secret); target: webhook:{args.name}")
        return 0
    if args.notify_command == "email":
        check_block_name(args.name)
        _use_prefect_api()
        save_email_block(args.name, args.server, args.port, args.username, args.smtp_type)
        print(f"saved block email-server-credentials/{args.name} ({args.smtp_type} {args.server}:{args.port}); target: email:{args.name}:TO[,TO...]")
        return 0
    # test
    if not args.timeout > 0:
        raise InvalidArgumentError(f"--timeout must be > 0 seconds, got {args.timeout}")
    parse_targets(args.target)  # every target well-formed before anything is sent
    _use_prefect_api()
    _warm_up_prefect_client()
    subject = "taxiflow: test notification"
    body = "\n".join(
        [
            "event: test",
            f"sent by: taxiflow notify test on {socket.gethostname()}",
            f"at: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            f"targets: {len(args.target)}",
        ]
    )
    deliveries = notify(args.target, subject, body, timeout_s=args.timeout)
    for d in deliveries:
        print(d)
    failed = [d for d in deliveries if not d.ok]
    if failed:
        print(f"taxiflow: error: {len(failed)} of {len(deliveries)} target(s) failed", file=sys.stderr)
        return 1
    return 0


def _use_prefect_api() -> None:
    """Blocks live in a Prefect server: PREFECT_API_URL, else the local stack's if it is up, else Prefect's temporary one."""
    if os.environ.get("PREFECT_API_URL"):
        return
    if "prefect" in sys.modules:  # already configured in this process (settings are read at import)
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return
    from taxiflow.platform.processes import is_healthy
    from taxiflow.platform.stack import StackState
    from taxiflow.settings import load_settings

    state = StackState.load(load_settings().stack_dir() / "stack.json")
    prefect = state.services.get("prefect")
    if prefect is not None and is_healthy(prefect, timeout_s=1.0):
        os.environ["PREFECT_API_URL"] = state.urls["prefect_api"]
        print(f"taxiflow: using the running stack's Prefect server at {state.urls['prefect_api']}", file=sys.stderr)


def _warm_up_prefect_client() -> None:
    """Start Prefect's temporary server (if that is what is used) before the send's time bound starts."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.api_healthcheck()


__all__ = [
    "TARGETS_ENV",
    "add_notify_parser",
    "current_flow_run_url",
    "event_from_flow_run",
    "notify_run_state",
    "run_notify_command",
    "send_event",
]
