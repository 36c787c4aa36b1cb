"""Shared fixtures: the real TLC files, a real Prefect server, and a way to run the `taxiflow` command."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from taxiflow.platform.warm_runner import stop_warm_runners
from tests.support.servers import VENV_BIN, base_env, prefect_server

# Flows run in this process (not through the command) must not start a warm runner either.
os.environ.setdefault("TAXIFLOW_WARM_RUNNER_IDLE_S", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TAXIFLOW_TEST_DATA", REPO.parent / "shared" / "data" / "nyc-tlc")).resolve()

# What starts servers (Prefect, MLflow, S3, the stack, a browser) or runs the `taxiflow` command (a Prefect
# server of its own when none is given): marked `servers`, so `pytest -m "not servers"` (`make test-fast`)
# is the quick tier. A test is marked by the fixtures it uses, or by where it lives.
_SERVER_FIXTURES = frozenset({"prefect_api", "run_taxiflow"})
_SERVER_DIRS = ("platform/", "examples/", "benchmarks/", "browser/")
_SERVER_FILE_PREFIXES = ("test_cli_", "test_planted_secrets")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        where = item.path.relative_to(tests).as_posix() if item.path.is_relative_to(tests) else ""
        uses_servers = bool(_SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if uses_servers or where.startswith(_SERVER_DIRS) or where.startswith(_SERVER_FILE_PREFIXES):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session", autouse=True)
def no_local_prefect_server_outlives_the_tests(tmp_path_factory):
    """A test that lets `taxiflow train` start the local Prefect server or a warm runner must stop it: one left running is an error (and is stopped)."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    left = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "taxiflow.platform.idle_server" in args and any(a.startswith(base) for a in args):
            left.append(Path(args[args.index("--dir") + 1]))
        if "taxiflow.platform.warm_runner" in args and any(a.startswith(base) for a in args):
            left.append(Path(args[args.index("--dir") + 1]))
    for directory in left:
        if directory.name == "local-prefect":
            stop_local_prefect(directory.parent)  # <state>/local-prefect
        else:
            stop_warm_runners(directory)
    assert not left, f"local Prefect servers or warm runners left running by tests (now stopped): {left}"


@pytest.fixture(scope="session")
def tlc_dir() -> Path:
    if not (SHARED_DATA / "green_tripdata_2023-01.parquet").is_file():
        pytest.fail(f"real TLC files not found in {SHARED_DATA} (set TAXIFLOW_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """One real Prefect server for the session: runs then cost ~3 s of overhead instead of ~15 s."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture
def state_dir(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def warm_runner_env(tmp_path_factory) -> dict[str, str]:
    """One warm runner for the session's commands (platform/warm_runner.py), as a user's later runs have.

    Started before any test, so no test's command starts one (and says so); stopped at the end.
    """
    directory = tmp_path_factory.mktemp("warm-runners")
    env = {"TAXIFLOW_WARM_RUNNER_DIR": str(directory), "TAXIFLOW_WARM_RUNNER_IDLE_S": "7200"}
    start = "import os; from pathlib import Path; from taxiflow.platform.warm_runner import ensure_warm_runner, runner_key; "
    start += "ensure_warm_runner(Path(os.environ['TAXIFLOW_WARM_RUNNER_DIR']), runner_key(), 7200)"
    subprocess.run([str(VENV_BIN / "python"), "-c", start], env=base_env(**env), check=True, timeout=60)
    yield env
    stop_warm_runners(directory)


@pytest.fixture
def run_taxiflow(tmp_path, state_dir, prefect_api, warm_runner_env):
    """Run the `taxiflow` command as a user would, against the session's Prefect server.

    With `server=False` no Prefect server is given: a run then starts the local one (kept warm for
    later runs), in this test's own PREFECT_HOME; it is stopped when the test ends. Flow commands run
    in the session's warm runner (a test can pass TAXIFLOW_WARM_RUNNER_IDLE_S=0 to run one in its own process).
    """
    started_local_server = False

    def run(*args: str, env: dict[str, str] | None = None, server: bool = True, timeout: float = 600) -> CommandResult:
        nonlocal started_local_server
        full_env = base_env(TAXIFLOW_STATE_DIR=str(state_dir), **warm_runner_env)
        if server:
            full_env["PREFECT_API_URL"] = prefect_api
        else:
            full_env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
            started_local_server = True
        full_env.update(env or {})
        proc = subprocess.run([str(VENV_BIN / "taxiflow"), *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    yield run
    if started_local_server:
        stop_local_prefect(state_dir)


def stop_local_prefect(state_dir: Path) -> None:
    """Stop the local Prefect server runs in `state_dir` keep warm (what `taxiflow stack down` does)."""
    from taxiflow.platform.local_prefect import stop_local_server
    from taxiflow.settings import TaxiflowSettings

    stop_local_server(TaxiflowSettings(state_dir=state_dir))


def registered_versions(state_dir: Path, model_name: str = "nyc-taxi-duration") -> list[str]:
    """Versions of `model_name` in the local SQLite store that a run in `state_dir` would use."""
    from mlflow.tracking import MlflowClient

    db = state_dir / "mlflow.db"
    if not db.is_file():
        # An absent store would read as "no versions" and let any "registers nothing" check pass.
        raise AssertionError(f"no MLflow store at {db}: the run never reached its tracking store")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return [str(mv.version) for mv in client.search_model_versions(f"name='{model_name}'")]
