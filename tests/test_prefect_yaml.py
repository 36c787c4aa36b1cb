"""prefect.yaml: the deployments, and the commented Docker/Kubernetes variants, checked against Prefect's own schemas.

The variants cannot run here (no Docker daemon, no cluster). What can be checked is checked: each is a
deployment Prefect's `prefect deploy` model accepts, its entrypoint names a flow of this package, and its
job_variables are valid for the worker type's base job template, whose variables schema Prefect ships
(`aggregate-worker-metadata.json`: the prefect-docker and prefect-kubernetes workers' defaults).
"""

from __future__ import annotations

import importlib
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel
from prefect.flows import Flow
from prefect.utilities.schema_tools.validation import ValidationError, validate

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
MARKER = "# --- Work pools past a process"
WORKER_TYPES = {"taxi-docker-pool": ("prefect-docker", "docker"), "taxi-k8s-pool": ("prefect-kubernetes", "kubernetes")}


def _commented_variants() -> list[dict]:
    text = PREFECT_YAML.read_text()
    block = text[text.index(MARKER) :].splitlines()
    entries = [line[1:] for line in block if line.startswith("#  ") or line == "#"]  # the indented, commented YAML
    return yaml.safe_load("\n".join(entries))


def _variables_schema(pool: str) -> dict:
    collection, worker = WORKER_TYPES[pool]
    metadata = resources.files("prefect.server.api.collections_data") / "views" / "aggregate-worker-metadata.json"
    return json.loads(metadata.read_text())[collection][worker]["default_base_job_configuration"]["variables"]


def _flow_at(entrypoint: str) -> Flow:
    path, _, name = entrypoint.partition(":")
    module = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(module), name)


def test_the_active_deployments_are_what_prefect_deploy_reads():
    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    names = [d.name for d in model.deployments]
    assert {"taxi-local-data", "taxi-tune", "taxi-backfill"} <= set(names) and len(names) == len(set(names))
    for deployment in model.deployments:
        assert isinstance(_flow_at(deployment.entrypoint or ""), Flow), deployment.name
        assert deployment.work_pool is not None and deployment.work_pool.name == "taxi-pool"


def test_the_docker_and_kubernetes_variants_are_valid_for_their_worker_types():
    variants = _commented_variants()
    assert {v["work_pool"]["name"] for v in variants} == set(WORKER_TYPES) and len(variants) == 3
    active = {d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    for raw in variants:
        deployment = DeploymentConfig.model_validate(raw)
        assert deployment.name not in active  # a variant, not a second definition
        flow = _flow_at(deployment.entrypoint or "")
        assert isinstance(flow, Flow) and set(deployment.parameters) <= set(flow.parameters.properties), deployment.name
        assert deployment.work_pool is not None
        job_variables = deployment.work_pool.job_variables
        schema = _variables_schema(deployment.work_pool.name)
        unknown = set(job_variables) - set(schema["properties"])
        assert not unknown, f"{deployment.name}: not variables of this worker type: {unknown}"
        validate(job_variables, schema, raise_on_error=True, ignore_required=True)
        assert job_variables["image"].startswith("ghcr.io/"), deployment.name  # runs from an image with taxiflow installed


@pytest.mark.parametrize(
    ("pool", "job_variables", "field"),
    [
        ("taxi-docker-pool", {"volumes": "taxiflow-state:/state"}, "volumes"),  # a list, not a string
        ("taxi-k8s-pool", {"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ("taxi-k8s-pool", {"finished_job_ttl": "a day"}, "finished_job_ttl"),
    ],
)
def test_the_check_refuses_what_a_worker_would(pool, job_variables, field):
    with pytest.raises(ValidationError, match=field):
        validate(job_variables, _variables_schema(pool), raise_on_error=True, ignore_required=True)
