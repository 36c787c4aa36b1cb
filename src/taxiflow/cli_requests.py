"""Command-line options generated from a request model: one definition for the flow and the CLI.

Each field becomes `--field-name` (or a name from `renamed`), typed text that the request model
parses and bounds itself, so the CLI and the Prefect run form refuse the same values with the
same limits. Defaults stay the model's: only options the user gave are passed on.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic import BaseModel

# Second spellings: `--train-months 2023-01..2023-03` reads better for a range than `--train-month`.
ALIASES = {"train_month": ("--train-months",)}


def option_names(model: type[BaseModel], renamed: dict[str, str]) -> dict[str, str]:
    return {name: renamed.get(name, "--" + name.replace("_", "-")) for name in model.model_fields}


def _choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a Literal, inside Optional or list if need be."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _choices(arg)
        if found:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def add_request_options(parser: argparse.ArgumentParser, model: type[BaseModel], renamed: dict[str, str], *, required: tuple[str, ...] = ()) -> None:
    names = option_names(model, renamed)
    for name, field in model.model_fields.items():
        option, help_text = names[name], field.description or ""
        if field.annotation is bool:
            # A flag that turns off a default-on behaviour (`--no-collapse-duplicates`).
            parser.add_argument(option, dest=name, action="store_const", const=not field.default, default=argparse.SUPPRESS, help=help_text)
            continue
        choices = _choices(field.annotation)
        metavar = "{" + ",".join(choices) + "}" if choices else None
        if _is_list(field.annotation) and choices:
            # A comma list on the command line (`--features pu_do,distance`).
            parser.add_argument(option, dest=name, default=argparse.SUPPRESS, metavar="A,B", help=f"comma list of {', '.join(choices)}: {help_text}")
        elif _is_list(field.annotation):
            parser.add_argument(option, dest=name, action="append", default=argparse.SUPPRESS, metavar="VALUE", help=f"{help_text} (repeatable)")
        else:
            default_note = "" if field.default is None or name in required else f" (default {field.default})"
            spellings = (option, *(a for a in ALIASES.get(name, ()) if option == "--" + name.replace("_", "-")))
            parser.add_argument(*spellings, dest=name, default=argparse.SUPPRESS, required=name in required, metavar=metavar, help=help_text + default_note)


def request_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields the user gave, as the model expects them (comma lists split)."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if _is_list(field.annotation) and _choices(field.annotation) and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        values[name] = value
    return values
