"""The UIs, tested in a real browser: what a person sees of a run in Prefect's and MLflow's UIs.

One stack for the module (`ui_stack`: up, deploy, one `taxiflow train`, down). Every check waits for
an element with a timeout (no sleeps) and, failing, names a full-page screenshot (see conftest.py).
"""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.servers]

MODEL = "nyc-taxi-duration"
TAXI_TYPES = ["green", "yellow", "fhv", "fhvhv"]

# Prefect draws the run graph on a <canvas> (pixi.js); its labels are bitmap-font glyphs, so neither the
# DOM nor canvas fillText calls hold task names. This probe, installed before the page's scripts run,
# records every pixi text object as it gets its first `_text` (an accessor on Object.prototype that
# turns into an own property on first assignment): the graph's labels, with their positions.
GRAPH_TEXT_PROBE = """
(() => {
  const seen = [];
  window.__graphTexts = seen;
  Object.defineProperty(Object.prototype, '_text', {
    configurable: true,
    get() { return undefined; },
    set(value) {
      Object.defineProperty(this, '_text', {value, writable: true, configurable: true, enumerable: true});
      seen.push(this);
    },
  });
})();
"""
# The labels the graph shows now: pixi objects attached to the stage and visible; bounds in canvas pixels.
GRAPH_LABELS = """
() => (window.__graphTexts || [])
  .filter(o => typeof o.updateText === 'function' && o.parent && o.worldVisible)
  .map(o => { const b = o.getBounds(); return {text: String(o._text), x: b.x, y: b.y, w: b.width, h: b.height}; })
"""
# Where a label is, once it stopped moving (the graph animates into place): the same bounds twice in a row.
SETTLED_LABEL = """
(name) => {
  const o = (window.__graphTexts || []).find(o => o._text === name && o.parent && o.worldVisible);
  if (!o) return false;
  const b = o.getBounds();
  const key = [b.x, b.y, b.width, b.height].map(Math.round).join(',');
  const settled = window.__lastLabelBounds === key;
  window.__lastLabelBounds = key;
  return settled && {x: b.x, y: b.y, w: b.width, h: b.height};
}
"""


def assert_(condition: object) -> None:
    """An assert usable in a lambda (for `ui.check`)."""
    assert condition


def _post(stack, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{stack.prefect_api}{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def _markdown_tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """The pipe tables of a markdown text: (header cells, rows of cells), cell text as rendered (no backticks, no **)."""

    def cells(line: str) -> list[str]:
        return [re.sub(r"`|\*\*", "", cell).strip() for cell in line.strip().strip("|").split("|")]

    lines = markdown.splitlines()
    tables = []
    for i, line in enumerate(lines):
        if i and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
            rows = []
            for body in lines[i + 1 :]:
                if not body.startswith("|"):
                    break
                rows.append(cells(body))
            tables.append((cells(lines[i - 1]), rows))
    return tables


def _deployment_id(stack, name: str) -> str:
    return next(d["id"] for d in _post(stack, "/deployments/filter", {}) if d["name"] == name)


def _form_field(page, name: str):
    """A parameter of Prefect's run form: the block holding its label ("max_depth (Optional)") and its input.

    The form's <label for> points at no element, so the input can't be found by its label's text alone.
    """
    label = page.locator(".schema-form-property__label", has_text=re.compile(rf"^{re.escape(name)}( \(Optional\))?$"))
    return page.locator("div.schema-form-property").filter(has=label)


def test_prefect_ui_calls_the_stacks_own_api(ui_stack, ui):
    """The UI a stack serves must talk to that stack's API (not to Prefect's default port 4200)."""
    page, api = ui.page, ui_stack.prefect_api
    api_calls: list[str] = []
    page.on("request", lambda req: "/api/" in req.url and api_calls.append(req.url))
    page.goto(f"{ui_stack.prefect_ui}/runs/flow-run/{ui_stack.flow_run_id}")
    cannot_connect = page.get_by_text("Can't connect to Server API")
    loaded = page.get_by_role("banner").get_by_text("Completed", exact=True)
    ui.check("the flow run page loads (or says it can't reach its API)", lambda: expect(loaded.or_(cannot_connect).first).to_be_visible())
    ui.shot("flow-run")
    settings = httpx.get(f"{ui_stack.prefect_ui}/ui-settings", timeout=10).json()
    elsewhere = sorted({u.split("/api/")[0] + "/api" for u in api_calls if not u.startswith(api + "/")})
    ui.check(
        f"the UI calls the stack's API {api}, not {elsewhere} (its /ui-settings say api_url={settings['api_url']})",
        lambda: assert_(settings["api_url"] == api and not elsewhere and api_calls),
    )
    ui.check("no 'Can't connect to Server API' message", lambda: expect(cannot_connect).to_have_count(0))
    ui.check("the run's state shows", lambda: expect(loaded).to_be_visible())


def test_flow_run_page_shows_completed_and_the_task_graph(ui_stack, ui):
    page = ui.page
    run = httpx.get(f"{ui_stack.prefect_api}/flow_runs/{ui_stack.flow_run_id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    tasks = {t["name"]: t["id"] for t in _post(ui_stack, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})}
    fit = next(name for name in tasks if name.startswith("fit_model"))
    assert any(name.startswith("register_model_version") for name in tasks), sorted(tasks)

    page.add_init_script(GRAPH_TEXT_PROBE)
    page.goto(f"{ui_stack.prefect_ui}/runs/flow-run/{run['id']}")
    banner = page.get_by_role("banner")
    ui.check("the run's name shows in the page heading", lambda: expect(banner.get_by_text(run["name"], exact=True)).to_be_visible())
    ui.check("the run's state badge says Completed", lambda: expect(banner.get_by_text("Completed", exact=True)).to_be_visible())
    ui.check("the task graph is drawn", lambda: expect(page.locator(".flow-run-graph canvas")).to_be_visible())
    # Every task run of the flow run is a labelled node of the graph.
    ui.check(
        f"the graph labels its nodes with the run's {len(tasks)} task names",
        lambda: page.wait_for_function(
            f"(names) => {{ const shown = new Set(({GRAPH_LABELS})().map(l => l.text)); return names.every(n => shown.has(n)); }}",
            arg=list(tasks),
            timeout=30_000,
        ),
    )
    ui.shot("task-graph")

    # Clicking the fit_model node's label selects that task run: the side panel names it, with its state.
    label = ui.check(f"the {fit} label settles", lambda: page.wait_for_function(SETTLED_LABEL, arg=fit, polling=300, timeout=30_000).json_value())
    canvas = page.locator(".flow-run-graph canvas").bounding_box()
    x, y = canvas["x"] + label["x"] + label["w"] / 2, canvas["y"] + label["y"] + label["h"] / 2
    ui.check(
        f"the {fit} label ({x:.0f}, {y:.0f}) lies in the visible graph {canvas}",
        lambda: assert_(canvas["x"] < x < canvas["x"] + canvas["width"] and canvas["y"] < y < canvas["y"] + canvas["height"]),
    )
    page.mouse.click(x, y)
    panel = page.locator(".flow-run-graph-selection-panel")
    ui.check(
        f"clicking the {fit} label opens its task run",
        lambda: expect(panel.get_by_role("link", name=fit, exact=True)).to_have_attribute("href", f"/runs/task-run/{tasks[fit]}"),
    )
    ui.check(f"the panel shows {fit} Completed", lambda: expect(panel.get_by_text("Completed", exact=True)).to_be_visible())
    ui.shot("fit-model-selected")


def test_report_artifact_renders_as_formatted_markdown(ui_stack, ui):
    page = ui.page
    artifacts = _post(
        ui_stack, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [ui_stack.flow_run_id]}, "key": {"any_": ["duration-model-report"]}}}
    )
    assert len(artifacts) == 1 and artifacts[0]["type"] == "markdown", artifacts
    markdown = artifacts[0]["data"]
    title = re.search(r"^# (.+)$", markdown, re.M).group(1)
    sections = re.findall(r"^## (.+)$", markdown, re.M)
    assert {"Data", "Model", "Promotion", "Tracking"} <= set(sections), sections

    page.goto(f"{ui_stack.prefect_ui}/artifacts/artifact/{artifacts[0]['id']}")
    ui.check(f"the report's title is an <h1>: {title!r}", lambda: expect(page.get_by_role("heading", level=1, name=title, exact=True)).to_be_visible())
    for section in sections:
        ui.check(
            f"section {section!r} is an <h2>", lambda section=section: expect(page.get_by_role("heading", level=2, name=section, exact=True)).to_be_visible()
        )
    ui.check(
        "one <h1>, and the <h2>s are the report's sections in order",
        lambda: (expect(page.locator("h1")).to_have_count(1), expect(page.locator("h2")).to_have_text(sections)),
    )

    # Each markdown table is a real table: its header cells are <th>s, each row's cells <td>s of one <tr>.
    tables = _markdown_tables(markdown)
    assert tables, markdown
    ui.check(f"one <table> per markdown table ({len(tables)})", lambda: expect(page.get_by_role("table")).to_have_count(len(tables)))
    for number, (header, rows) in enumerate(tables):
        table = page.get_by_role("table").nth(number)
        ui.check(
            f"table {number + 1} has the {len(header)} header cells {header}",
            lambda table=table, header=header: expect(table.locator("th")).to_have_text(header),
        )
        for cells in rows:
            row = table.get_by_role("row").filter(has=page.get_by_role("cell", name=next(c for c in cells if c), exact=True))
            ui.check(f"table {number + 1} has a row of <td>s {cells}", lambda row=row, cells=cells: expect(row.first.locator("td")).to_have_text(cells))

    # Not shown as source: no <pre>/<code> holds markdown syntax, and no raw markdown line is on the page.
    raw = page.evaluate(r"""() => [...document.querySelectorAll('pre, code')].map(e => e.textContent)
                               .filter(t => /(^|\n)#{1,6} |\|---|\*\*/.test(t))""")
    ui.check("no <pre>/<code> element holds the markdown source", lambda: assert_(raw == []))
    ui.check(
        "no raw markdown heading or table rule is on the page",
        lambda: (expect(page.get_by_text("## Data")).to_have_count(0), expect(page.get_by_text("|---")).to_have_count(0)),
    )
    ui.shot("report")


def test_custom_run_form_has_typed_fields_and_refuses_bad_values_before_a_run_exists(ui_stack, ui):
    page = ui.page
    deployment = _deployment_id(ui_stack, "taxi-local-data")
    runs_of_it = {"deployments": {"id": {"any_": [deployment]}}}
    before = len(_post(ui_stack, "/flow_runs/filter", runs_of_it))
    creations: list[int] = []
    page.on("response", lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run") and creations.append(r.status))

    page.goto(f"{ui_stack.prefect_ui}/deployments/deployment/{deployment}")
    ui.check("the deployment page has a Run button", lambda: page.get_by_role("button", name="Run", exact=True).click())
    ui.check("the Run menu offers a Custom run", lambda: page.get_by_role("button", name="Custom run", exact=True).click())
    ui.check(
        "Custom run opens the run form",
        lambda: (page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment}/run")), expect(_form_field(page, "taxi")).to_be_visible()),
    )
    ui.shot("custom-run-form")

    # taxi: a choice of the four types (a select button whose listbox opens from the keyboard).
    taxi = _form_field(page, "taxi")
    choice = taxi.get_by_role("button", name="green", exact=True)
    ui.check("taxi is a select showing its default, green", lambda: expect(choice).to_be_visible())
    choice.focus()
    page.keyboard.press("Space")
    options = page.get_by_role("listbox").get_by_role("option")
    ui.check(f"taxi's options are {TAXI_TYPES}", lambda: expect(options).to_have_text(TAXI_TYPES))
    ui.shot("taxi-options")
    page.keyboard.press("Escape")
    ui.check("the taxi listbox closes", lambda: expect(page.get_by_role("listbox")).to_have_count(0))

    # Months: text boxes holding the defaults.
    for name, default in (("train_month", "2023-01"), ("val_month", "2023-02")):
        box = _form_field(page, name).get_by_role("textbox")
        ui.check(f"{name} is a text box with {default}", lambda box=box, default=default: expect(box).to_have_value(default))
    # Numbers: spin buttons (<input type=number>); an optional bounded one (max_depth: 1..64 or None) once "int" is chosen.
    for name in ("min_count", "promotion_margin"):
        ui.check(f"{name} is a number input", lambda name=name: expect(_form_field(page, name).get_by_role("spinbutton")).to_have_attribute("type", "number"))
    max_depth = _form_field(page, "max_depth")
    ui.check("max_depth offers int or None", lambda: max_depth.get_by_role("button", name="int", exact=True).click())
    ui.check("max_depth as int is a number input", lambda: expect(max_depth.get_by_role("spinbutton")).to_have_attribute("type", "number"))
    max_depth.get_by_role("button", name="None", exact=True).click()
    ui.shot("typed-fields", show=max_depth)

    # A month that doesn't exist: refused with a message naming the field, and no run is created.
    _form_field(page, "train_month").get_by_role("textbox").fill("2023-13")
    page.get_by_role("button", name="Submit", exact=True).click()
    ui.check(
        "submitting train_month=2023-13 shows why it is refused",
        lambda: expect(page.get_by_text(re.compile(r"train_month.*'2023-13' does not match")).first).to_be_visible(),
    )
    ui.shot("bad-month-refused")
    ui.check("the form stays open", lambda: expect(page).to_have_url(re.compile(rf"/deployments/deployment/{deployment}/run")))
    after = len(_post(ui_stack, "/flow_runs/filter", runs_of_it))
    ui.check(
        f"no flow run was created (runs of the deployment: {before} -> {after}; create_flow_run answered {creations})",
        lambda: assert_(after == before and all(status >= 400 for status in creations)),
    )

    # A bound broken in a number field: the form's own validation says so next to the field, nothing is sent.
    sent = len(creations)
    max_depth.get_by_role("button", name="int", exact=True).click()
    max_depth.get_by_role("spinbutton").fill("0")
    page.get_by_role("button", name="Submit", exact=True).click()
    ui.check("max_depth=0 is refused next to the field", lambda: expect(max_depth.get_by_text("is not valid")).to_be_visible())
    ui.shot("bad-depth-refused", show=max_depth)
    ui.check(f"the form sent nothing with max_depth=0 (create_flow_run calls: {creations})", lambda: assert_(len(creations) == sent))
    ui.check("still no flow run of the deployment", lambda: assert_(len(_post(ui_stack, "/flow_runs/filter", runs_of_it)) == before))


def test_mlflow_registered_model_page_lists_versions_and_aliases(ui_stack, ui):
    from mlflow.tracking import MlflowClient

    page, client = ui.page, MlflowClient(ui_stack.mlflow)
    model = client.get_registered_model(MODEL)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    assert versions == [int(ui_stack.train_summary["model_version"])], versions
    assert {"champion", "challenger"} <= set(model.aliases), model.aliases

    # The MLflow UI keeps requests open: wait for elements, never for network idle.
    page.goto(f"{ui_stack.mlflow}/#/models/{MODEL}", wait_until="domcontentloaded")
    ui.check(f"the page is {MODEL}'s", lambda: expect(page.get_by_role("heading", name=MODEL, exact=True)).to_be_visible(timeout=60_000))
    table = page.get_by_role("table").filter(has=page.get_by_role("columnheader", name="Aliases"))
    ui.check("the versions table is shown", lambda: expect(table).to_be_visible())
    for version in versions:
        link = table.get_by_role("link", name=f"Version {version}", exact=True)
        ui.check(
            f"version {version} is listed, linking to its page",
            lambda link=link, version=version: expect(link).to_have_attribute("href", f"#/models/{MODEL}/versions/{version}"),
        )
    for alias, version in sorted(model.aliases.items()):
        row = table.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
        ui.check(
            f"alias @{alias} shows on version {version}'s row",
            lambda row=row, alias=alias: expect(row.get_by_role("status", name=alias, exact=True)).to_contain_text(alias),
        )
    ui.shot("registered-model")
