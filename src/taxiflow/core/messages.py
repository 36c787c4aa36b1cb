"""Notification messages about a model's lifecycle: what happened, rendered as short plain text.

Pure: an event is a frozen record of facts the caller already has (a run's months and RMSE, the
registered version, the promotion gate's decision, links); `render_message` turns it into a
one-line subject and a body with one fact per line, fit for a Slack webhook or an e-mail.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

EventKind = Literal["completed", "failed", "crashed", "cancelled", "promoted"]
EVENT_KINDS: tuple[str, ...] = ("completed", "failed", "crashed", "cancelled", "promoted")
GateDecision = Literal["promoted", "kept", "forced", "not-evaluated"]
GATE_DECISIONS: tuple[str, ...] = ("promoted", "kept", "forced", "not-evaluated")

SUBJECT_ERROR_CHARS = 120  # a failure's subject quotes the start of its error
BODY_VALUE_CHARS = 1000  # no single fact floods a chat channel


@dataclass(frozen=True)
class LifecycleEvent:
    """One thing worth telling people: a train run ended (completed / failed / crashed / cancelled) or a model was promoted.

    Versions are MLflow registered-model versions ("3"); `champion_*` describe the model serving
    before the gate ran, scored on this run's validation month. `gate` is the promotion gate's
    outcome (`taxiflow.core.promotion.GateOutcome`), `gate_reason` its explanation.
    """

    kind: str
    taxi: str | None = None
    train_month: str | None = None
    val_month: str | None = None
    job: str = "train"  # which flow ended: "train", or "score" (a scoring run's failure)
    month: str | None = None  # the month a scoring run scored
    model_name: str | None = None
    rmse: float | None = None
    challenger_version: str | None = None
    champion_version: str | None = None
    champion_rmse_on_val: float | None = None
    gate: str | None = None
    gate_reason: str | None = None
    flow_run_name: str | None = None
    flow_run_url: str | None = None
    model_version_url: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {', '.join(EVENT_KINDS)}, got {self.kind!r}")
        if self.gate is not None and self.gate not in GATE_DECISIONS:
            raise ValueError(f"gate decision must be one of {', '.join(GATE_DECISIONS)}, got {self.gate!r}")
        for name in ("challenger_version", "champion_version"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))  # MLflow hands out versions as str or int
        for name in ("rmse", "champion_rmse_on_val"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))


@dataclass(frozen=True)
class DriftEvent:
    """A scoring run found dataset drift: the scored month moved away from the model's training month.

    `drifted_columns` of `columns_checked` drifted (Evidently's default tests, see `core.drift`),
    a share at or above `drift_share`. `rmse` is the scored month's (rides with actual durations),
    `reference_rmse` the version's validation RMSE.
    """

    taxi: str
    month: str
    model_name: str
    model_version: str
    drifted_columns: tuple[str, ...]
    columns_checked: int
    share_drifted: float
    drift_share: float
    reference_month: str | None = None
    rows_scored: int | None = None
    rmse: float | None = None
    reference_rmse: float | None = None
    flow_run_name: str | None = None
    flow_run_url: str | None = None
    mlflow_run_url: str | None = None
    kind: str = "drift"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_version", str(self.model_version))
        object.__setattr__(self, "drifted_columns", tuple(self.drifted_columns))
        for name in ("rmse", "reference_rmse", "share_drifted", "drift_share"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))


def render_message(event: LifecycleEvent | DriftEvent) -> tuple[str, str]:
    """(subject, body): the subject is one line; the body has one `label: value` line per known fact."""
    if isinstance(event, DriftEvent):
        return _drift_subject(event), _drift_body(event)
    return _subject(event), _body(event)


def _drift_subject(event: DriftEvent) -> str:
    versus = f" vs {event.reference_month}" if event.reference_month else ""
    columns = f"{len(event.drifted_columns)} of {event.columns_checked} columns ({', '.join(event.drifted_columns)})"
    return _one_line(f"taxiflow: {event.taxi} {event.month} DRIFT{versus}: {columns}, {event.model_name} {_version(event.model_version)}", 300)


def _drift_body(event: DriftEvent) -> str:
    rmse = None
    if event.rmse is not None:
        rmse = _rmse(event.rmse, 4) + (f" (validation {_rmse(event.reference_rmse, 4)})" if event.reference_rmse is not None else "")
    facts: list[tuple[str, object]] = [
        ("event", event.kind),
        ("taxi", event.taxi),
        ("scored month", event.month),
        ("reference month", event.reference_month),
        ("model", f"{event.model_name} {_version(event.model_version)}"),
        ("rides scored", f"{event.rows_scored:,}" if event.rows_scored is not None else None),
        ("drifted columns", ", ".join(event.drifted_columns)),
        ("drift share", f"{event.share_drifted:.0%} of {event.columns_checked} columns (alert at {event.drift_share:.0%})"),
        ("RMSE", rmse),
        ("flow run", event.flow_run_name),
        ("flow run URL", event.flow_run_url),
        ("MLflow run URL", event.mlflow_run_url),
    ]
    return "\n".join(f"{label}: {_one_line(value)}" for label, value in facts if value not in (None, ""))


def mlflow_model_version_url(tracking_uri: str | None, model_name: str, version: str | int) -> str | None:
    """The MLflow UI page of a model version, for an http(s) tracking server (None for a local store).

    Credentials in the URI (user:password@) and any query are left out: the link goes to chat and mail.
    """
    if not tracking_uri:
        return None
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/models/{quote(model_name, safe='')}/versions/{quote(str(version), safe='')}"


def _one_line(text: object, limit: int = BODY_VALUE_CHARS) -> str:
    """Whitespace (newlines included) collapsed to single spaces, cut at `limit` characters."""
    flat = re.sub(r"\s+", " ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _scope(event: LifecycleEvent) -> str:
    if event.job == "score":
        return " ".join(part for part in (event.taxi, event.month, "scoring") if part)
    months = "->".join(m for m in (event.train_month, event.val_month) if m)
    return " ".join(part for part in (event.taxi, months) if part) or "train run"


def _rmse(value: float | None, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _version(version: str | None) -> str:
    return f"v{version}" if version else "?"


def _subject(event: LifecycleEvent) -> str:
    prefix = f"taxiflow: {_scope(event)}"
    if event.kind in ("failed", "crashed", "cancelled"):
        error = _one_line(event.error, SUBJECT_ERROR_CHARS) if event.error else ""
        return f"{prefix} {event.kind.upper()}" + (f": {error}" if error else "")
    challenger = _version(event.challenger_version)
    decision = event.gate or ("promoted" if event.kind == "promoted" else None)
    vs_champion = f" vs champion {_version(event.champion_version)} {_rmse(event.champion_rmse_on_val, 2)}" if event.champion_version else ""
    if decision == "promoted":
        detail = f"RMSE {_rmse(event.rmse, 2)}{vs_champion}" if event.champion_version else f"RMSE {_rmse(event.rmse, 2)}, first champion"
        return f"{prefix} promoted {challenger} ({detail})"
    if decision == "forced":
        return f"{prefix} promoted {challenger} (forced; RMSE {_rmse(event.rmse, 2)}{vs_champion})"
    if decision == "kept":
        kept = f", kept champion {_version(event.champion_version)}" if event.champion_version else ", not promoted"
        versus = f" vs {_rmse(event.champion_rmse_on_val, 2)}" if event.champion_version else ""
        return f"{prefix} trained {challenger}{kept} (RMSE {_rmse(event.rmse, 2)}{versus})"
    if decision == "not-evaluated":
        return f"{prefix} trained {challenger} (RMSE {_rmse(event.rmse, 2)}), not promoted: champion {_version(event.champion_version)} not evaluated"
    return f"{prefix} trained {challenger} (RMSE {_rmse(event.rmse, 2)})"


def _body(event: LifecycleEvent) -> str:
    facts: list[tuple[str, object]] = [
        ("event", event.kind if event.job == "train" else f"{event.job} {event.kind}"),
        ("taxi", event.taxi),
        ("scored month", event.month),
        ("train month", event.train_month),
        ("validation month", event.val_month),
        ("flow run", event.flow_run_name),
    ]
    if event.challenger_version or event.model_name:
        name = event.model_name or "model"
        facts.append(("model", f"{name} {_version(event.challenger_version)}" if event.challenger_version else name))
    if event.rmse is not None:
        facts.append(("validation RMSE", _rmse(event.rmse, 4)))
    if event.champion_version:
        on = f" on {event.val_month}" if event.val_month else ""
        score = f", RMSE {_rmse(event.champion_rmse_on_val, 4)}{on}" if event.champion_rmse_on_val is not None else ", not scored"
        facts.append(("champion", f"{_version(event.champion_version)}{score}"))
    if event.gate:
        facts.append(("gate", f"{event.gate}: {event.gate_reason}" if event.gate_reason else event.gate))
    facts += [("error", event.error), ("flow run URL", event.flow_run_url), ("model version URL", event.model_version_url)]
    return "\n".join(f"{label}: {_one_line(value)}" for label, value in facts if value not in (None, ""))
