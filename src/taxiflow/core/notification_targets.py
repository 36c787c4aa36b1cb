"""Notification targets as a user writes them (`webhook:<block>`, `email:<block>:<to>`): parsing only.

Pure, so a request can be validated before anything starts; sending is `io.notifications`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from taxiflow.core.errors import InvalidArgumentError

WEBHOOK_URL_ENV = "TAXIFLOW_WEBHOOK_URL"
TARGET_FORMS = "webhook:<block> or email:<block>:<to>[,<to>...]"
_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # Prefect's rule for block document names
_ADDRESS = re.compile(r"^[^@\s,;:<>()\[\]\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class WebhookTarget:
    block: str

    @property
    def label(self) -> str:
        return f"webhook:{self.block}"


@dataclass(frozen=True)
class EmailTarget:
    block: str
    recipients: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"email:{self.block}"  # recipients stay out of logs


Target = WebhookTarget | EmailTarget


def check_block_name(name: str, *, what: str = "block name") -> str:
    if not _BLOCK_NAME.match(name or ""):
        raise InvalidArgumentError(f"{what} {name!r}: use lowercase letters, digits and dashes (a Prefect block name)")
    return name


def parse_target(text: str) -> Target:
    """`webhook:<block>` or `email:<block>:<to>[,<to>...]`; InvalidArgumentError saying what is wrong otherwise."""
    text = (text or "").strip()
    if not text:
        raise InvalidArgumentError(f"empty notification target: expected {TARGET_FORMS}")
    kind, _, rest = text.partition(":")
    if "://" in text:
        # Never echo it: it may be the secret webhook URL itself.
        raise InvalidArgumentError(
            f"a notification target names a Prefect block, not a URL (got a URL for {kind!r}, not shown): "
            f"save the URL in a block with `taxiflow notify webhook --name NAME` ({WEBHOOK_URL_ENV} in the environment)"
        )
    if kind == "webhook":
        if ":" in rest:
            raise InvalidArgumentError(f"notification target {text!r}: expected webhook:<block> (recipients are for email targets)")
        return WebhookTarget(check_block_name(rest, what=f"notification target {text!r}: block name"))
    if kind == "email":
        block, _, recipients_text = rest.partition(":")
        check_block_name(block, what=f"notification target {text!r}: block name")
        recipients = tuple(r.strip() for r in re.split(r"[,;]", recipients_text) if r.strip())
        if not recipients:
            raise InvalidArgumentError(f"notification target {text!r}: expected email:<block>:<to>[,<to>...] with at least one recipient")
        for address in recipients:
            if not _ADDRESS.match(address):
                raise InvalidArgumentError(f"notification target {text!r}: {address!r} is not an e-mail address")
        return EmailTarget(block, recipients)
    raise InvalidArgumentError(f"notification target {text!r}: unknown kind {kind!r}, expected {TARGET_FORMS}")


def parse_targets(texts: Sequence[str]) -> list[Target]:
    return [parse_target(t) for t in texts]
