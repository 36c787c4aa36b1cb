"""Every third-party package the code imports is a declared dependency (not only there by chance, through another)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement ("moto[server]==5.2.5" -> "moto")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)[0]).lower()


RUNTIME = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
DEV = {_name(r) for r in PYPROJECT["dependency-groups"]["dev"]}


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in `path` (also those inside functions and TYPE_CHECKING)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _undeclared(roots: list[str], declared: set[str]) -> dict[str, list[str]]:
    """Imported third-party names none of whose distributions is in `declared`, with a file importing each."""
    distributions = packages_distributions()
    local = {"taxiflow", "tests", "benchmarks", "examples"}
    missing: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            siblings = {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
            for name in _imports(path) - set(sys.stdlib_module_names) - local - siblings:
                if not {_name(d) for d in distributions.get(name, [])} & declared:
                    missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    return missing


def test_the_package_imports_only_runtime_dependencies():
    assert _undeclared(["src"], RUNTIME) == {}


@pytest.mark.parametrize("root", ["tests", "benchmarks", "examples"])
def test_tests_benchmarks_and_examples_import_only_declared_dependencies(root):
    assert _undeclared([root], RUNTIME | DEV) == {}
