"""Best-effort notifications through Prefect blocks: a Slack-style webhook and e-mail over SMTP.

A target names a saved Prefect block, never a URL or a password:

    webhook:<block>                    a `CustomWebhookNotificationBlock` posting {"text": "<subject>\\n<body>"}
    email:<block>:<to>[,<to>...]       a prefect-email `EmailServerCredentials` block, and the recipients
                                       (separated by "," or ";")

The webhook URL lives only in the block's `secrets` (its visible `url` field is the template
"{{webhook_url}}"); the SMTP password only in the credentials block's secret field. Both come from
the environment when the block is saved (`save_webhook_block`, `save_email_block`).

`notify` sends to every target concurrently and returns within about `timeout_s` whatever the
receivers do (answer 500, hang, be down): it never raises, logs each failure as a WARNING on the
`taxiflow.notifications` logger naming the target by kind and block name only, and returns one
`Delivery` per target. Secrets appear in no log line, error detail or return value: error details
are built from the exception's type and status, with every secret of the loaded blocks (and any
URL) redacted, and a filter on httpx's logger redacts them from its request lines.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import smtplib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.notification_targets import (
    _ADDRESS,
    WEBHOOK_URL_ENV,
    EmailTarget,
    Target,
    WebhookTarget,
    check_block_name,
    parse_target,
)
from taxiflow.io.blocks import load_block, save_block

LOGGER = logging.getLogger("taxiflow.notifications")

TARGETS_ENV = "TAXIFLOW_NOTIFY_TARGETS"  # whitespace-separated targets
SMTP_PASSWORD_ENV = "TAXIFLOW_SMTP_PASSWORD"
SENDER_ENV = "TAXIFLOW_NOTIFY_FROM"  # the e-mails' From (default: the SMTP username if an address, else taxiflow@localhost)
DEFAULT_SENDER = "taxiflow@localhost"

WEBHOOK_URL_KEY = "webhook_url"  # the secret's key, templated into the block's url
SLACK_PAYLOAD = {"text": "{{subject}}\n{{body}}"}  # Slack's incoming-webhook format (also Mattermost, Rocket.Chat, ...)
SMTP_TYPES: tuple[str, ...] = ("INSECURE", "SSL", "STARTTLS")

_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


# --- targets -------------------------------------------------------------------------------------


def configured_targets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The targets in TAXIFLOW_NOTIFY_TARGETS (whitespace-separated; empty or unset: none)."""
    return ((os.environ if environ is None else environ).get(TARGETS_ENV) or "").split()


# --- saving blocks (secrets from the environment only) -------------------------------------------


def save_webhook_block(name: str, *, allow_private_urls: bool = False, timeout_s: float = 10.0) -> None:
    """Save (or overwrite) a Custom Webhook block posting Slack-style JSON to the URL in TAXIFLOW_WEBHOOK_URL.

    The URL is stored only in the block's secrets; its `url` field is the template "{{webhook_url}}".
    `allow_private_urls`: Prefect's SSRF guard refuses private and loopback addresses unless set
    (a chat server on the LAN, a local test receiver).
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.types import SecretDict

    check_block_name(name)
    url = os.environ.get(WEBHOOK_URL_ENV, "").strip()
    if not url:
        raise InvalidArgumentError(f"{WEBHOOK_URL_ENV} must be set in the environment to the webhook URL (e.g. a Slack incoming webhook)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"{WEBHOOK_URL_ENV} must be an http:// or https:// URL (its value is not shown)")
    if not timeout_s > 0:
        raise InvalidArgumentError(f"webhook timeout must be > 0 seconds, got {timeout_s}")
    block = CustomWebhookNotificationBlock(
        name=name,
        url="{{" + WEBHOOK_URL_KEY + "}}",
        method="POST",
        json_data=dict(SLACK_PAYLOAD),
        headers=None,
        cookies=None,
        secrets=SecretDict({WEBHOOK_URL_KEY: url}),
        allow_private_urls=allow_private_urls,
        timeout=timeout_s,
    )
    save_block(block, name)


def save_email_block(name: str, smtp_server: str, smtp_port: int, username: str | None = None, smtp_type: str = "STARTTLS") -> None:
    """Save (or overwrite) an EmailServerCredentials block; the password comes from TAXIFLOW_SMTP_PASSWORD.

    The password may be empty only without a username (a local relay that needs no login).
    """
    from prefect_email import EmailServerCredentials

    check_block_name(name)
    server = (smtp_server or "").strip()
    if not server or "/" in server or ":" in server or any(c.isspace() for c in server):
        raise InvalidArgumentError(f"SMTP server must be a host name or address (no scheme, port or path), got {smtp_server!r}")
    if not 1 <= int(smtp_port) <= 65535:
        raise InvalidArgumentError(f"SMTP port must be 1..65535, got {smtp_port}")
    kind = (smtp_type or "").upper()
    if kind not in SMTP_TYPES:
        raise InvalidArgumentError(f"SMTP type must be one of {', '.join(SMTP_TYPES)}, got {smtp_type!r}")
    password = os.environ.get(SMTP_PASSWORD_ENV, "")
    if username and not password:
        raise InvalidArgumentError(f"a username is given but {SMTP_PASSWORD_ENV} is empty: set the SMTP password in the environment")
    credentials = EmailServerCredentials(
        username=username or None,
        password=password,  # a SecretStr field: the API returns it obfuscated
        smtp_server=server,
        smtp_type=kind,
        smtp_port=int(smtp_port),
    )
    save_block(credentials, name)


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What happened to one target. `target` is "<kind>:<block>" (or the malformed text's error), never a URL."""

    target: str
    ok: bool
    detail: str
    seconds: float

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED':<7} {self.target}: {self.detail} ({self.seconds:.2f} s)"


def notify(targets: Sequence[str], subject: str, body: str, *, timeout_s: float = 5.0) -> list[Delivery]:
    """Send `subject` and `body` to every target at once; back within ~`timeout_s`; never raises.

    Returns one Delivery per target, in order. Failures (a malformed target, a missing block, a
    receiver answering an error, hanging or down) are logged as warnings on `taxiflow.notifications`.
    """
    started = time.monotonic()
    deadline = started + max(float(timeout_s), 0.0)
    slots: list[Delivery | _Job] = []
    for text in targets:
        try:
            target = parse_target(text)
        except InvalidArgumentError as exc:
            slots.append(Delivery("(malformed target)", False, _redact(str(exc)), 0.0))
            continue
        job = _Job(target, subject, body, started, deadline)
        job.start()
        slots.append(job)
    for slot in slots:
        if isinstance(slot, _Job):
            slot.thread.join(max(0.0, deadline - time.monotonic()))
    deliveries = [slot if isinstance(slot, Delivery) else slot.delivery(timeout_s) for slot in slots]
    for d in deliveries:
        if d.ok:
            LOGGER.info("notification sent to %s: %s (%.2f s)", d.target, d.detail, d.seconds)
        else:
            LOGGER.warning("notification to %s failed: %s", d.target, d.detail)
    return deliveries


class _Job:
    """One target's delivery, on a daemon thread: a receiver that never answers holds neither the caller nor the process's exit."""

    def __init__(self, target: Target, subject: str, body: str, started: float, deadline: float) -> None:
        self.target, self.subject, self.body = target, subject, body
        self.started, self.deadline = started, deadline
        self.result: tuple[bool, str, float] | None = None
        # Each thread runs in a copy of the caller's context: Prefect's settings (API URL) and run
        # context are context variables, and a context can be entered by one thread at a time.
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._run,), name=f"taxiflow-notify-{target.label}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            ok, detail = True, _send(self.target, self.subject, self.body, self.deadline)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, never raised in a thread
            ok, detail = False, _describe_error(exc)
        self.result = (ok, detail, time.monotonic() - self.started)

    def delivery(self, timeout_s: float) -> Delivery:
        result = self.result
        if result is None:
            return Delivery(self.target.label, False, f"no answer within {timeout_s:g} s", time.monotonic() - self.started)
        ok, detail, seconds = result
        return Delivery(self.target.label, ok, detail, seconds)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("out of time")
    return left


def _send(target: Target, subject: str, body: str, deadline: float) -> str:
    if isinstance(target, WebhookTarget):
        return _send_webhook(target, subject, body, deadline)
    return _send_email(target, subject, body, deadline)


def _send_webhook(target: WebhookTarget, subject: str, body: str, deadline: float) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = load_block(CustomWebhookNotificationBlock, target.block)
    # The URL is a secret, whether templated from the block's secrets (as saved here) or typed into `url`.
    _remember_secrets(*block.secrets.get_secret_value().values(), *([block.url] if "{{" not in block.url else []))
    # The block's own timeout applies per connect/read; it is cut to what is left of ours.
    block = block.model_copy(update={"timeout": min(float(block.timeout), _remaining(deadline))})
    block.notify(body, subject=subject, _sync=True)  # type: ignore[call-arg]  # `_sync`: see io.blocks. Raises on an HTTP error status
    return "delivered"


def _send_email(target: EmailTarget, subject: str, body: str, deadline: float) -> str:
    from prefect_email import EmailServerCredentials

    credentials = load_block(EmailServerCredentials, target.block)
    _remember_secrets(credentials.password.get_secret_value())
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = _sender(credentials.username)
    message["To"] = ", ".join(target.recipients)
    message.set_content(body)
    _remaining(deadline)
    # prefect-email opens the connection (and logs in) without a timeout of its own: the caller's
    # bound is the thread join; from here on every socket operation has one.
    server = credentials.get_server()
    try:
        if server.sock is not None:
            server.sock.settimeout(_remaining(deadline))
        refused = server.send_message(message)
    finally:
        try:
            server.quit()
        except (smtplib.SMTPException, OSError):
            server.close()
    if refused:
        raise smtplib.SMTPException(f"the server refused {len(refused)} of {len(target.recipients)} recipient(s)")
    return f"sent to {len(target.recipients)} recipient(s)"


def _sender(username: str | None) -> str:
    configured = os.environ.get(SENDER_ENV, "").strip()
    if configured:
        return configured
    return username if username and _ADDRESS.match(username) else DEFAULT_SENDER


# --- keeping secrets out of messages and logs -----------------------------------------------------

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


class _RedactSecrets(logging.Filter):
    """Rewrites a record whose message holds a known secret (httpx logs each request's full URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            redacted = _redact_known(message)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


_REDACT_FILTER = _RedactSecrets()


def _remember_secrets(*values: object) -> None:
    with _SECRETS_LOCK:
        _SECRETS.update(v for v in values if isinstance(v, str) and len(v) >= 4)
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


def _redact_known(text: str) -> str:
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _redact(text: str) -> str:
    """Known secrets, then any URL, replaced: error texts may quote the request URL."""
    return _ANY_URL.sub("<url>", _redact_known(text))


def _describe_error(exc: BaseException) -> str:
    """A short, secret-free description of why a delivery failed."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):  # its message quotes the URL
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".strip()
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timed out"
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return _redact(f"SMTP {exc.smtp_code} {text}")[:300]
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"the server refused all {len(exc.recipients)} recipient(s)"
    if isinstance(exc, ValueError) and "Unable to find block document" in str(exc):
        return "no such block"
    return _redact(f"{type(exc).__name__}: {exc}")[:300]
