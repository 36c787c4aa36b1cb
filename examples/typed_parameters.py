"""Typed flow parameters: Prefect coerces and validates them (with pydantic) before the run starts.

    python examples/typed_parameters.py [KEY=VALUE ...]
    python examples/typed_parameters.py date=2023-01-05 count=3 taxi=yellow 'window={"min_minutes": 1, "max_minutes": 60}'

Each VALUE is read as JSON when it parses, else kept as a string: the same rule as
`prefect deployment run --param KEY=VALUE`, so parameters arrive as they would from the UI or a
deployment (JSON), and Prefect turns them into the annotated types: "2023-01-05" becomes a
`datetime.date`, a JSON object becomes a `DurationWindow`, "3" (a string) becomes the int 3.

A bad value (`count=11`, `taxi=blue`, `date=2023-02-30`, a window with min >= max) fails the flow
run before its body runs (the run goes to Failed without ever Running, its message says which
parameter is wrong), and the script exits with status 2.

Printed on success: one JSON line with each parameter's value and Python type inside the flow
(`{"values": {...}, "types": {"date": "date", ...}, "days": [...]}`).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import ParameterTypeError
from pydantic import BaseModel, Field, model_validator

Taxi = Literal["green", "yellow", "fhv", "fhvhv"]


class DurationWindow(BaseModel):
    """Trips kept for training: durations in [min_minutes, max_minutes]."""

    min_minutes: float = Field(default=1, ge=0)
    max_minutes: float = Field(default=60, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DurationWindow:
        if self.min_minutes >= self.max_minutes:
            raise ValueError(f"min_minutes ({self.min_minutes}) must be below max_minutes ({self.max_minutes})")
        return self


@flow(name="typed-parameters")
def typed_parameters(
    date: datetime.date,
    count: Annotated[int, Field(ge=1, le=10, description="how many days from `date`")] = 3,
    taxi: Taxi = "green",
    # Prefect builds the parameter schema (UI form, defaults) from the signature; the flow never mutates it.
    window: DurationWindow = DurationWindow(),  # noqa: B008
) -> dict[str, Any]:
    logger = get_run_logger()
    values = {"date": date.isoformat(), "count": count, "taxi": taxi, "window": window.model_dump()}
    types = {"date": type(date).__name__, "count": type(count).__name__, "taxi": type(taxi).__name__, "window": type(window).__name__}
    for name in values:
        logger.info("%s = %r (%s)", name, values[name], types[name])
    days = [(date + datetime.timedelta(days=i)).isoformat() for i in range(count)]
    logger.info("%s taxi, %d day(s): %s; trips of %g..%g minutes", taxi, count, ", ".join(days), window.min_minutes, window.max_minutes)
    return {"values": values, "types": types, "days": days}


def parse_params(args: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE as JSON when it parses, else the raw string (like `prefect deployment run --param`)."""
    params: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"usage: {sys.argv[0]} [KEY=VALUE ...] (got {arg!r})")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def main(args: list[str]) -> int:
    params = parse_params(args) or {"date": "2023-01-05"}
    try:
        result = typed_parameters(**params)
    except ParameterTypeError as exc:
        print(f"rejected before the run started: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
