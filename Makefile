# Two commands on a fresh machine: `make train` (the main job) and `make test` (the test suite).
# Both install the locked environment first (uv, from PyPI, if it is missing).
SHELL := /bin/bash
UV_VERSION := 0.13.9
# A pinned uv in a private tool venv: reproducible, and works on a machine that has only python3.
UV := .tools/bin/uv
export UV_COMPILE_BYTECODE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true

TAXI ?= green
TRAIN_MONTH ?= 2023-01
VAL_MONTH ?= 2023-02

.PHONY: setup train check test test-fast bench bench-scoring bench-serving
setup: .venv/.synced

$(UV):
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock $(UV)
	$(UV) sync --frozen
	@touch $@

train: setup
	$(UV) run --frozen taxiflow train --taxi $(TAXI) --train-month $(TRAIN_MONTH) --val-month $(VAL_MONTH)

check: setup  ## formatting, lint and types (ruff, mypy: configured in pyproject.toml)
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy

test: setup check
	$(UV) run --frozen pytest

test-fast: setup  ## the tests that start no server and run no `taxiflow` command (under a minute)
	$(UV) run --frozen pytest -m "not servers"

bench: setup  ## taxiflow vs the course pipeline (~20 min on 2 cores): benchmarks/out/results.{md,json}, *.png
	$(MAKE) -C benchmarks bench

bench-scoring: setup  ## batch scoring of a 3.4M-row month vs reading it + the booster alone (~6 min): benchmarks/out/scoring/
	$(MAKE) -C benchmarks bench-scoring

bench-serving: setup  ## `taxiflow serve` vs `mlflow models serve` on the same champion with wrk (~5 min): benchmarks/out/serving/
	@command -v wrk >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk)
	$(MAKE) -C benchmarks bench-serving
