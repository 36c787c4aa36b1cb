"""A real stack with one trained model, a headless Chromium, and screenshots a failure can be looked at.

- `ui_stack` (module scope): `taxiflow stack up` on free ports in a temporary state dir, `taxiflow
  deploy`, one `taxiflow train` (linear, green 2023-01 -> 2023-02) against it; `stack down` at the end,
  always (also when bringing it up failed half-way).
- `browser` (module scope): Debian's /usr/bin/chromium, launched by Playwright (which never downloads a
  browser here), headless, with the flags this closed network needs (without them Chromium stalls on
  connection attempts to Google's hosts).
- `ui` (per test): a fresh page plus `ui.shot(name)` and `ui.check(what, assertion)`: full-page
  screenshots land in the test's `tmp_path` and are copied to a stable, git-ignored place,
  `.pytest_cache/d/browser/<test name>/` (pytest's own cache directory, whatever `--basetemp` is);
  a failed check saves a screenshot and the page's HTML and names them in the assertion message.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.servers import VENV_BIN, base_env, free_port

CHROMIUM = Path("/usr/bin/chromium")
# --no-sandbox: we run as root. The rest: this machine's network is closed, and without them Chromium
# keeps trying (and failing) to reach Google's services, which stalls page loads.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRAIN = ("--model", "linear", "--train-month", "2023-01", "--val-month", "2023-02")


@dataclass
class UIStack:
    """A running stack (Prefect server + worker, MLflow server, S3 server) with the deployments and one trained model."""

    root: Path
    env: dict[str, str]
    prefect_api: str = ""
    prefect_ui: str = ""
    mlflow: str = ""
    train_summary: dict = field(default_factory=dict)
    flow_run_id: str = ""  # the Prefect flow run of that `taxiflow train`

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "taxiflow"), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)

    def must(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"`taxiflow {' '.join(args)}` exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory, tlc_dir) -> Iterator[UIStack]:
    root = tmp_path_factory.mktemp("ui-stack")
    (root / "empty-data").mkdir()  # the worker's data dir: nothing here depends on it
    env = base_env(
        TAXIFLOW_STATE_DIR=str(root / "state"),
        TAXIFLOW_DATA_DIR=str(root / "empty-data"),
        TAXIFLOW_STACK_PREFECT_PORT=str(free_port()),
        TAXIFLOW_STACK_MLFLOW_PORT=str(free_port()),
        TAXIFLOW_STACK_S3_PORT=str(free_port()),
    )
    stack = UIStack(root, env)
    try:
        stack.must("stack", "up")
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", stack.must("stack", "env").stdout, re.M))
        stack.prefect_api, stack.mlflow = exports["PREFECT_API_URL"], exports["MLFLOW_TRACKING_URI"]
        stack.prefect_ui = stack.prefect_api.removesuffix("/api")
        stack.must("deploy")
        # No PREFECT_API_URL in the environment: the command finds the running stack's Prefect server.
        train = stack.must("train", *TRAIN, "--data-dir", str(tlc_dir), "--tracking-uri", stack.mlflow, "--json", timeout=600)
        stack.train_summary = json.loads(train.stdout.strip().splitlines()[-1])
        from mlflow.tracking import MlflowClient

        stack.flow_run_id = MlflowClient(stack.mlflow).get_run(stack.train_summary["run_id"]).data.tags["taxiflow.prefect_flow_run_id"]
        # The run was recorded by the stack's Prefect server (not a temporary one): its UI can show it.
        run = httpx.get(f"{stack.prefect_api}/flow_runs/{stack.flow_run_id}", timeout=10)
        assert run.status_code == 200, f"flow run {stack.flow_run_id} is not in the stack's Prefect server: {run.status_code}\n{train.stderr[-2000:]}"
        yield stack
    finally:
        stack.run("stack", "down", timeout=180)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install -y chromium` (.ci/run does; Playwright's own browser download is not used)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # Playwright's default of 5 s is short for a loaded CI machine
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"browser_report_{report.when}", report)


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:limit].rstrip("-.") or "page"


class UI:
    """One test's page, and the screenshots it leaves behind."""

    def __init__(self, page, out_dir: Path, stable_dir: Path | None) -> None:
        self.page = page
        self.out_dir = out_dir
        self.stable_dir = stable_dir
        self.console: list[str] = []  # console errors and failed requests: shown when a check fails
        self._count = 0
        page.on("console", lambda msg: msg.type == "error" and self.console.append(f"console: {msg.text[:300]}"))
        page.on("requestfailed", lambda req: self.console.append(f"request failed: {req.method} {req.url[:200]} ({req.failure})"))

    def shot(self, name: str, show=None) -> Path:
        """A full-page screenshot (scrolled to the locator `show` first); returns the stable copy's path (the tmp_path one if there is none).

        Prefect's pages scroll inside their layout, not the document: "full page" is the viewport there, hence `show`.
        """
        if show is not None:
            show.scroll_into_view_if_needed()
        self._count += 1
        path = self.out_dir / f"{self._count:02d}-{_slug(name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if self.stable_dir is None:
            return path
        return Path(shutil.copy(path, self.stable_dir / path.name))

    def dump_html(self, name: str) -> Path:
        path = self.out_dir / f"{self._count:02d}-{_slug(name)}.html"
        path.write_text(self.page.content())
        if self.stable_dir is None:
            return path
        return Path(shutil.copy(path, self.stable_dir / path.name))

    def check(self, what: str, assertion: Callable[[], object]):
        """Run `assertion` (Playwright `expect`s, waits, plain asserts); on failure, say `what` and where the screenshot is."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            return assertion()
        except (AssertionError, PlaywrightError) as exc:
            evidence = []
            with contextlib.suppress(Exception):
                evidence.append(f"screenshot: {self.shot('FAILED-' + what)}")
                evidence.append(f"page HTML:  {self.dump_html('FAILED-' + what)}")
            evidence.append(f"page URL:   {self.page.url}")
            log = "\n  ".join(self.console[-12:])
            raise AssertionError(f"{what}\n" + "\n".join(evidence) + f"\n{type(exc).__name__}: {exc}" + (f"\nbrowser log:\n  {log}" if log else "")) from None


def _stable_dir(request) -> Path | None:
    cache = getattr(request.config, "cache", None)
    if cache is None:  # -p no:cacheprovider
        return None
    directory = cache.mkdir("browser") / _slug(request.node.name, limit=150)
    shutil.rmtree(directory, ignore_errors=True)  # this run's screenshots only
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def ui(browser, request, tmp_path) -> Iterator[UI]:
    out_dir = tmp_path / "screenshots"
    out_dir.mkdir()
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(30_000)
    context.set_default_navigation_timeout(60_000)
    page = context.new_page()
    helper = UI(page, out_dir, _stable_dir(request))
    try:
        yield helper
    finally:
        report = getattr(request.node, "browser_report_call", None)
        if report is not None and report.failed:
            with contextlib.suppress(Exception):
                print(f"\nscreenshot at failure: {helper.shot('at-failure')}")
        context.close()
