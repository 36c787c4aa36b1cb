"""The course's small flows in `examples/`, run as a user runs them (`python examples/<name>.py`).

Every run goes to the session's real Prefect server (but one, which proves the examples also work
without a server), and each test then asks that server's REST API what it recorded: flow runs,
states, task runs, subflow links, logs.

The example processes are started all at once by a module fixture: each one mostly waits on the
server, so together they take little more than the slowest one.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from examples._local_http import CAT_FACTS, DOG_FACTS, FlakyRoute
from tests.support.servers import base_env

REPO = Path(__file__).resolve().parents[2]
HELLO_NAME = "taxiflow-examples"
BAD_TYPED_PARAMS = ["date=2023-02-30", "count=11", "taxi=blue", 'window={"min_minutes": 5, "max_minutes": 5}']

# key -> (script and arguments, run against the session's Prefect server?), in start order: the run
# without a server starts its own temporary one (the slowest), so it goes first.
EXAMPLES: dict[str, tuple[list[str], bool]] = {
    "hello-no-server": (["hello_flow.py", "no-server"], False),
    "hello": (["hello_flow.py", HELLO_NAME], True),
    "typed": (["typed_parameters.py", "date=2023-01-05", 'count="4"', "taxi=yellow", 'window={"min_minutes": 2, "max_minutes": "30"}'], True),
    "typed-bad": (["typed_parameters.py", *BAD_TYPED_PARAMS], True),
    "retries": (["retries.py"], True),
    "retries-exhausted": (["retries.py", "--fail-first", "5"], True),
    "facts": (["facts_subflows.py"], True),
}

T = TypeVar("T")


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"{self.args} exited {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-5000:]}"


@pytest.fixture(scope="module")
def runs(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Run every example once, concurrently, each with its own PREFECT_HOME."""
    root = tmp_path_factory.mktemp("examples")
    started = {}
    for key, (args, with_server) in EXAMPLES.items():
        home = root / key
        home.mkdir()
        env = base_env(PREFECT_HOME=str(home))
        if with_server:
            env["PREFECT_API_URL"] = prefect_api
        else:  # a temporary server starts in the process; the machine is shared by all these runs
            env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
        cmd = [sys.executable, f"examples/{args[0]}", *args[1:]]
        with open(home / "stdout", "wb") as out, open(home / "stderr", "wb") as err:
            started[key] = (cmd, home, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err))
    results = {}
    try:
        for key, (cmd, home, process) in started.items():
            try:
                process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{cmd} still running after 300 s:\n{(home / 'stderr').read_text()[-5000:]}")
            results[key] = Run(cmd, process.returncode, (home / "stdout").read_text(), (home / "stderr").read_text())
    finally:
        for _, _, process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


# --- the server's REST API ---------------------------------------------------------------------


def post(api: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{api}{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def eventually(get: Callable[[], T], ok: Callable[[T], bool], what: str, timeout_s: float = 60) -> T:
    """Some records (task runs, logs) reach the server's database through its event pipeline: poll."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen on the server; last answer: {value!r}")
        time.sleep(0.3)


def flow_runs(api: str, flow_name: str, **match: Any) -> list[dict[str, Any]]:
    found = post(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})
    return [r for r in found if all(r["parameters"].get(k) == v for k, v in match.items())]


def one_flow_run(api: str, flow_name: str, state_type: str, **match: Any) -> dict[str, Any]:
    matching = [r for r in flow_runs(api, flow_name, **match) if r["state_type"] == state_type]
    assert len(matching) == 1, f"{flow_name} {state_type} runs matching {match}: {flow_runs(api, flow_name)}"
    return matching[0]


def task_runs(api: str, flow_run_id: str, expected: int) -> list[dict[str, Any]]:
    get = lambda: post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})  # noqa: E731
    done = lambda trs: len(trs) >= expected and all(t["state_type"] in ("COMPLETED", "FAILED") for t in trs)  # noqa: E731
    return eventually(get, done, f"{expected} finished task runs of flow run {flow_run_id}")


def log_messages(api: str, flow_run_id: str, *needles: str) -> str:
    get = lambda: "\n".join(l["message"] for l in post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}}))  # noqa: E731, E741
    return eventually(get, lambda text: all(n in text for n in needles), f"logs {needles} of flow run {flow_run_id}")


def state_history(api: str, kind: str, run_id: str) -> list[str]:
    response = httpx.get(f"{api}/{kind}_run_states/", params={f"{kind}_run_id": run_id}, timeout=10)
    response.raise_for_status()
    return [s["name"] for s in sorted(response.json(), key=lambda s: s["timestamp"])]


def assert_state_history(api: str, kind: str, run_id: str, expected: list[str]) -> None:
    # task run states are recorded from events, possibly in more than one batch: wait for all of them
    eventually(lambda: state_history(api, kind, run_id), lambda names: names == expected, f"{kind} run {run_id} states {expected}")


def assert_subflow_of(api: str, child: dict[str, Any], parent: dict[str, Any], parent_tasks: list[dict[str, Any]]) -> None:
    assert child["parent_task_run_id"] is not None, child
    links = {t["id"]: t for t in parent_tasks}
    assert child["parent_task_run_id"] in links, f"{child['name']} is not linked to a task run of {parent['name']}"
    assert links[child["parent_task_run_id"]]["flow_run_id"] == parent["id"]


# --- the examples ------------------------------------------------------------------------------


@pytest.mark.servers
def test_hello_flow_runs_a_named_task_and_a_named_subflow(runs, prefect_api):
    run = runs["hello"]
    assert run.returncode == 0, run.explain()
    assert run.stdout.strip().splitlines()[-1] == f"HELLO, {HELLO_NAME.upper()}!", run.explain()

    parent = one_flow_run(prefect_api, "hello-flow", "COMPLETED", name=HELLO_NAME)
    tasks = task_runs(prefect_api, parent["id"], expected=2)  # say-hello, and the subflow's link
    hello_tasks = [t for t in tasks if t["name"].startswith("say-hello")]
    assert [t["state_type"] for t in hello_tasks] == ["COMPLETED"], tasks

    child = one_flow_run(prefect_api, "shout", "COMPLETED", text=f"Hello, {HELLO_NAME}!")
    assert_subflow_of(prefect_api, child, parent, tasks)

    # get_run_logger() lines of the flow and its task are stored with the flow run, the subflow's with its own
    log_messages(prefect_api, parent["id"], f"greeting {HELLO_NAME}", f"task says: Hello, {HELLO_NAME}!")
    log_messages(prefect_api, child["id"], f"subflow shouts: HELLO, {HELLO_NAME.upper()}!")


@pytest.mark.servers
def test_hello_flow_runs_without_a_prefect_server(runs, prefect_api):
    run = runs["hello-no-server"]
    assert run.returncode == 0, run.explain()
    assert run.stdout.strip().splitlines()[-1] == "HELLO, NO-SERVER!", run.explain()
    assert "Starting temporary server on http://127.0.0.1:" in run.stderr, run.explain()
    assert "Finished in state Completed()" in run.stderr, run.explain()
    assert flow_runs(prefect_api, "hello-flow", name="no-server") == []  # it went to its own temporary server


@pytest.mark.servers
def test_typed_parameters_arrive_coerced_to_their_annotated_types(runs, prefect_api):
    run = runs["typed"]
    assert run.returncode == 0, run.explain()
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # strings from the command line (as from the UI or a deployment) became a date, an int, a pydantic model
    assert result["types"] == {"date": "date", "count": "int", "taxi": "str", "window": "DurationWindow"}
    assert result["values"] == {"date": "2023-01-05", "count": 4, "taxi": "yellow", "window": {"min_minutes": 2.0, "max_minutes": 30.0}}
    assert result["days"] == ["2023-01-05", "2023-01-06", "2023-01-07", "2023-01-08"]

    # the server stores the parameters as they were sent; the coercion happens in the run
    flow_run = one_flow_run(prefect_api, "typed-parameters", "COMPLETED", taxi="yellow")
    assert flow_run["parameters"] == {"date": "2023-01-05", "count": "4", "taxi": "yellow", "window": {"min_minutes": 2, "max_minutes": "30"}}
    log_messages(prefect_api, flow_run["id"], "date = '2023-01-05' (date)", "count = 4 (int)", "(DurationWindow)")


@pytest.mark.servers
def test_bad_typed_parameters_fail_the_run_before_it_starts(runs, prefect_api):
    run = runs["typed-bad"]
    assert run.returncode == 2, run.explain()
    problems = [
        "date: Input should be a valid date or datetime, day value is outside expected range",
        "count: Input should be less than or equal to 10",
        "taxi: Input should be 'green', 'yellow', 'fhv' or 'fhvhv'",
        "window: Value error, min_minutes (5.0) must be below max_minutes (5.0)",
    ]
    assert "rejected before the run started: Flow run received invalid parameters:" in run.stderr, run.explain()
    for problem in problems:
        assert problem in run.stderr, run.explain()
    assert "Beginning flow run" not in run.stderr, run.explain()  # the flow's body never ran

    flow_run = one_flow_run(prefect_api, "typed-parameters", "FAILED", taxi="blue")
    assert flow_run["parameters"]["count"] == 11
    message = flow_run["state"]["message"]
    assert message.startswith("Validation of flow parameters failed with error: ParameterTypeError"), message
    for problem in problems:
        assert problem in message, message
    assert flow_run["run_count"] == 0
    assert_state_history(prefect_api, "flow", flow_run["id"], ["Pending", "Failed"])  # never Running


@pytest.mark.servers
def test_retries_call_the_flaky_endpoint_until_it_answers(runs, prefect_api):
    run = runs["retries"]
    assert run.returncode == 0, run.explain()
    assert run.stdout.strip().splitlines()[-1] == "attempts=3 statuses=503,503,200", run.explain()

    flow_run = one_flow_run(prefect_api, "retries-flow", "COMPLETED")
    [task_run] = task_runs(prefect_api, flow_run["id"], expected=1)
    assert task_run["name"].startswith("call-flaky-endpoint")
    assert (task_run["state_type"], task_run["run_count"]) == ("COMPLETED", 3)
    assert_state_history(
        prefect_api,
        "task",
        task_run["id"],
        ["Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry", "Retrying", "Completed"],
    )
    log_messages(
        prefect_api,
        flow_run["id"],
        "attempt 1 of 5: HTTP 503",
        "attempt 2 of 5: HTTP 503",
        "attempt 3 of 5: HTTP 200",
        "answered after 3 attempt(s)",
    )


@pytest.mark.servers
def test_retries_give_up_after_four(runs, prefect_api):
    run = runs["retries-exhausted"]
    assert run.returncode == 1, run.explain()
    assert "failed after 5 attempts" in run.stderr and "statuses=503,503,503,503,503" in run.stderr, run.explain()

    flow_run = one_flow_run(prefect_api, "retries-flow", "FAILED")
    assert "503 Service Unavailable" in flow_run["state"]["message"]
    [task_run] = task_runs(prefect_api, flow_run["id"], expected=1)
    assert (task_run["state_type"], task_run["run_count"]) == ("FAILED", 5)


@pytest.mark.servers
def test_facts_parent_flow_prints_what_its_two_subflows_fetched(runs, prefect_api):
    run = runs["facts"]
    assert run.returncode == 0, run.explain()
    cat, dog = f"Cat fact: {CAT_FACTS[0]}", f"Dog fact: {DOG_FACTS[0]}"
    # log_prints=True: print() becomes a Prefect log line (on the console, and on the server)
    assert cat in run.stderr and dog in run.stderr, run.explain()

    parent = one_flow_run(prefect_api, "animal-facts", "COMPLETED")
    tasks = task_runs(prefect_api, parent["id"], expected=2)
    for child_flow in ("fetch-cat-fact", "fetch-dog-fact"):
        child = one_flow_run(prefect_api, child_flow, "COMPLETED", api_url=parent["parameters"]["api_url"])
        assert_subflow_of(prefect_api, child, parent, tasks)
    log_messages(prefect_api, parent["id"], cat, dog)


# --- without running anything ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "flow_name", "parameters", "required"),
    [
        ("examples/hello_flow.py:hello_flow", "hello-flow", ["name"], []),
        ("examples/typed_parameters.py:typed_parameters", "typed-parameters", ["date", "count", "taxi", "window"], ["date"]),
        ("examples/retries.py:retries_flow", "retries-flow", ["url"], ["url"]),
        ("examples/facts_subflows.py:animal_facts", "animal-facts", ["api_url"], ["api_url"]),
    ],
)
def test_each_flow_loads_from_its_entrypoint_for_deployments(entrypoint, flow_name, parameters, required, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    loaded = load_flow_from_entrypoint(entrypoint)
    assert loaded.name == flow_name
    # The parameter schema a deployment form is built from: the function's parameters, in order.
    schema = loaded.parameters.model_dump()
    assert list(schema["properties"]) == parameters, schema
    assert schema.get("required", []) == required, schema


def test_typed_parameters_schema_carries_the_bounds_and_choices():
    from prefect.flows import load_flow_from_entrypoint

    schema = load_flow_from_entrypoint(f"{REPO}/examples/typed_parameters.py:typed_parameters").parameters.model_dump()
    props = schema["properties"]
    assert schema["required"] == ["date"]
    assert (props["date"]["format"], props["count"]["minimum"], props["count"]["maximum"]) == ("date", 1, 10)
    assert props["taxi"]["enum"] == ["green", "yellow", "fhv", "fhvhv"]


def test_flaky_route_is_deterministic():
    first, again = FlakyRoute(fail_first=1, failure_rate=0.5, seed=7), FlakyRoute(fail_first=1, failure_rate=0.5, seed=7)
    statuses = [first.next_status()[1] for _ in range(40)]
    # As documented: call 1 fails outright; each later call fails when random.Random(seed) draws
    # below failure_rate (the forced failures draw nothing).
    rng = random.Random(7)
    assert statuses == [503] + [503 if rng.random() < 0.5 else 200 for _ in range(39)]
    assert statuses == [again.next_status()[1] for _ in range(40)]  # the same seed, the same sequence
    assert {200, 503} == set(statuses[1:]) and first.statuses == statuses
    route = FlakyRoute(fail_first=2)
    assert [route({})[0] for _ in range(4)] == [503, 503, 200, 200]
