"""`taxiflow backfill` over many months: cold vs warm vs up to date, and how time and memory grow with the months.

    .venv/bin/python -m benchmarks.backfill            # ~8 min on 2 quiet cores (~18 min when busy: disturbed runs are run again): XGBoost
    .venv/bin/python -m benchmarks.backfill --quick    # ~1-2 min: 4 months, linear model: the machinery only

The months: N consecutive months of a synthetic calendar (2022-01, 2022-02, ...), month i made of
every row of ONE real green month (rotating through the six in ../shared/data/nyc-tlc/: 2021-01,
2021-02, 2023-01, 2023-02, 2023-03, 2024-01), with all 20 columns and the file's parquet schema, and
each pickup moved by whole months into the target month (polars `dt.offset_by`, so day 31 becomes
the target month's last day) and each dropoff moved to the new pickup plus the trip's original
duration: every trip and its duration are real, only the calendar moved. Written once under TLC
names (`green_tripdata_2022-01.parquet`, ...) into benchmarks/data/backfill/ (gitignored), with the
TLC's zone lookup linked next to them; rebuilt only when the recipe changes (deterministic, so a
rebuilt file has the same bytes, hence the same identity).

Measured: the real command, `taxiflow backfill --taxi green --from 2022-01 --to ... --json`, as a
user runs it (whole process: wall time, peak RSS from wait4, other load on the machine), against
ONE Prefect server this run starts (or `--prefect-api`), every run with PREFECT_API_URL set:
1. 12 months (11 pairs), XGBoost, max concurrency 2, in one state directory (TAXIFLOW_STATE_DIR:
   the default local MLflow store, the prepared-trips cache): **cold** (new state directory: nothing
   cached, no model), then **warm** (`--mode all`: every pair trains again, its months' prepared
   trips come from the cache), then **up to date** (mode missing: every pair already trained on
   identical inputs; nothing trains).
2. **growth**: cold backfills over 3, 6 and 12 months (2, 5, 11 pairs; the 12-month one is step 1's
   cold run), each in a new state directory: wall time, time per pair, peak RSS.

A run disturbed by other work on the machine (more than 0.3 cores busy elsewhere, from /proc/stat)
is run again once (`--retries`), the least disturbed kept; each run's load is reported. The runs use
a copy of src/taxiflow taken at the start (PYTHONPATH; `--live-code` to not): the training keys
include a digest of taxiflow's core/, so an edit of the shared working tree between two runs would
otherwise turn "up to date" into "trained". The command's RSS is sampled every 0.5 s besides
wait4's peak: what it still holds once every pair is done shows whether memory builds up per pair.

Results: benchmarks/out/backfill/ (results.json, results.md, logs/: each run's stderr, the pairs' logs);
`--rewrite-report` derives the figures and writes results.md again from results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.make_data import ZONE_LOOKUP, _link
from benchmarks.measure import run_measured, session_cpu_s, session_memory, wait_for_quiet
from benchmarks.pairs import DATA_DIR, REPO, shared_tlc_dir, tlc_name
from taxiflow.core.months import Month
from tests.support.servers import VENV_BIN, base_env, free_port, running_process

OUT_DIR = REPO / "benchmarks" / "out" / "backfill"
MONTHS_DIR = DATA_DIR / "backfill" / "green"
FIRST_MONTH = "2022-01"
SOURCE_MONTHS = ("2021-01", "2021-02", "2023-01", "2023-02", "2023-03", "2024-01")  # the real green months here, in rotation
PICKUP, DROPOFF = "lpep_pickup_datetime", "lpep_dropoff_datetime"
RECIPE = "every row of the source month; pickup offset_by whole months, dropoff = new pickup + original duration; v1"
MARKER = b"taxiflow.benchmark.backfill"  # the recipe, in each written file's schema metadata
MONTHS, GROWTH_MONTHS = 12, (3, 6, 12)
QUICK_MONTHS, QUICK_GROWTH_MONTHS = 3, (2, 3)  # the smoke test's: the fewest runs that exercise every scenario
# The verdicts' thresholds (printed with them).
LINEAR_TOLERANCE = 0.10  # every growth point within 10% of the least-squares line through them
FLAT_TOLERANCE = 1.25  # largest peak RSS at most 1.25x the smallest
MAX_OTHER_LOAD = 0.3  # cores busy with other work above which a run is flagged as disturbed


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the months ----------------------------------------------------------------------------------


def months_from(first: str, count: int) -> list[str]:
    start = Month.parse(first)
    return [str(start.shift(i)) for i in range(count)]


def source_of(month: str, first: str = FIRST_MONTH) -> str:
    """The real month whose rows make up synthetic `month` (the six rotate from `first` on)."""
    target, start = Month.parse(month), Month.parse(first)
    return SOURCE_MONTHS[((target.year - start.year) * 12 + target.month - start.month) % len(SOURCE_MONTHS)]


def month_shift(source: str, target: str) -> int:
    a, b = Month.parse(source), Month.parse(target)
    return (b.year - a.year) * 12 + b.month - a.month


def shift_trips(table: pa.Table, months: int) -> pa.Table:
    """Each pickup moved by `months` whole months (day clamped to the target month's length), each dropoff kept at its original duration after it.

    Every other column, the schema and the row order are unchanged.
    """
    import polars as pl

    frame = pl.from_arrow(table.select([PICKUP, DROPOFF]))
    assert isinstance(frame, pl.DataFrame)
    pickup = pl.col(PICKUP).dt.offset_by(f"{months}mo")
    moved = frame.select(pickup.alias(PICKUP), (pickup + (pl.col(DROPOFF) - pl.col(PICKUP))).alias(DROPOFF))
    for name in (PICKUP, DROPOFF):
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        table = table.set_column(index, field, moved[name].to_arrow().cast(field.type))
    return table


def _recipe(source: Path, months: int) -> bytes:
    return json.dumps({"source": source.name, "shift_months": months, "recipe": RECIPE}, sort_keys=True).encode()


def synthetic_month(source: Path, month: str, target: Path) -> Path:
    """`target` (TLC-named for `month`): `source`'s rows shifted into `month`; kept if already written by this recipe."""
    shift = month_shift(source.stem.rsplit("_", 1)[-1], month)
    recipe = _recipe(source, shift)
    if target.is_file() and (pq.read_schema(target).metadata or {}).get(MARKER) == recipe:
        return target
    table = shift_trips(pq.read_table(source), shift)
    table = table.replace_schema_metadata((table.schema.metadata or {}) | {MARKER: recipe})
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    pq.write_table(table, partial)
    os.replace(partial, target)
    return target


def build_months(count: int, directory: Path = MONTHS_DIR, *, first: str = FIRST_MONTH, source_dir: Path | None = None) -> list[dict]:
    """`count` consecutive synthetic months from `first` in `directory` (with the zone lookup linked); what each is made of."""
    source_dir = source_dir or shared_tlc_dir()
    made = []
    for month in months_from(first, count):
        source = source_dir / tlc_name(source_of(month, first))
        path = synthetic_month(source, month, directory / tlc_name(month))
        pickups = pq.read_table(path, columns=[PICKUP]).column(0)
        start, end = (dt.datetime.fromisoformat(f"{m}-01") for m in (month, str(Month.parse(month).shift(1))))
        in_month = sum(1 for p in pickups.to_pylist() if p is not None and start <= p < end)
        made.append(
            {
                "month": month,
                "source": source.name,
                "shift_months": month_shift(source_of(month, first), month),
                "rows": pickups.length(),
                "pickups_in_month": in_month / pickups.length(),
            }
        )
    if (source_dir / ZONE_LOOKUP).is_file():
        _link(source_dir / ZONE_LOOKUP, directory / ZONE_LOOKUP)
    return made


# --- the code under test -------------------------------------------------------------------------


def core_digest(package: Path) -> str:
    """A digest of `package`/core/*.py, the code taxiflow's identity keys include (`core.identity.code_version`): an edit there changes every key."""
    h = hashlib.sha256()
    for path in sorted((package / "core").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def snapshot_code(target: Path) -> Path:
    """A copy of src/taxiflow as it is now, for PYTHONPATH: every run of the benchmark then runs the same code.

    The working tree is shared: an edit of core/ between two runs would change the training keys,
    and an "up to date" run would train again (as it should, for edited code).
    """
    shutil.copytree(REPO / "src" / "taxiflow", target / "taxiflow", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _imported_from(env: dict[str, str]) -> str:
    code = "import taxiflow; print(taxiflow.__file__)"
    return subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


# --- the runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    sid: int | None  # its session when this run started it: its CPU is not other work, its memory is read after each run

    def cpu_s(self) -> float:
        return session_cpu_s(self.sid)

    def memory(self) -> dict | None:
        if self.sid is None:
            return None
        processes = session_memory(self.sid)
        return {"rss_mb": sum(p["rss_mb"] for p in processes), "peak_rss_mb": sum(p["peak_rss_mb"] for p in processes), "processes": len(processes)}


@contextmanager
def prefect_server(given: str | None, scratch: Path) -> Iterator[PrefectServer]:
    """The given server, or one started for this whole benchmark (its own PREFECT_HOME, UI off)."""
    if given:
        yield PrefectServer(given, None)
        return
    home = scratch / "prefect-home"
    home.mkdir()
    port = free_port()
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = base_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    with running_process(cmd, f"http://127.0.0.1:{port}/api/health", home / "prefect-server.log", env) as process:
        yield PrefectServer(f"http://127.0.0.1:{port}/api", process.pid)  # its own session: sid == pid


@dataclass(frozen=True)
class Plan:
    months: int
    growth: tuple[int, ...]
    model: str
    max_concurrency: int
    first: str
    wait_quiet_s: float
    snapshot: bool  # run a copy of src/taxiflow taken at the start (PYTHONPATH), not the live working tree
    retries: int  # runs again of a scenario disturbed by other work (the least disturbed run is kept)


def _flow_runs(api: str, body: dict) -> list[dict]:
    import httpx

    response = httpx.post(f"{api.rstrip('/')}/flow_runs/filter", json=body | {"limit": 200}, timeout=30)
    response.raise_for_status()
    return response.json()


def prefect_runs(api: str, pairs: list[str], since: dt.datetime) -> dict:
    """From Prefect's record: the backfill's own flow run, and the pairs' `train` child runs started since `since` (the command's launch).

    Spans are in seconds from `since`, the time axis of `RssSampler`'s samples.
    """
    import httpx

    since_filter = {"start_time": {"after_": since.isoformat()}}
    tags = [f"taxiflow-pair:green:{p.replace('->', ':')}" for p in pairs]
    try:
        parents = _flow_runs(api, {"flow_runs": since_filter, "flows": {"name": {"any_": ["backfill"]}}})
        children = _flow_runs(api, {"flow_runs": since_filter | {"tags": {"any_": tags}}, "sort": "START_TIME_ASC"})
    except httpx.HTTPError as exc:
        return {"error": str(exc)}
    parent = min(parents, key=lambda r: r["start_time"]) if parents else None

    def seconds(stamp: str | None) -> float | None:
        return (dt.datetime.fromisoformat(stamp) - since).total_seconds() if stamp else None

    spans = [
        {
            "name": r["name"],
            "state": r.get("state_type"),
            "start_s": seconds(r["start_time"]),
            "end_s": seconds(r.get("end_time")),
            "run_s": r.get("total_run_time"),
        }
        for r in children
        if r.get("start_time")
    ]
    times = sorted(float(c["run_s"]) for c in spans if c["run_s"] is not None)
    return {
        "backfill_flow_s": parent.get("total_run_time") if parent else None,
        "backfill_flow_start_s": seconds(parent["start_time"]) if parent else None,
        "children": spans,
        "child_count": len(times),
        "child_sum_s": sum(times),
        "child_median_s": times[len(times) // 2] if times else None,
        "child_min_s": times[0] if times else None,
        "child_max_s": times[-1] if times else None,
    }


class RssSampler(threading.Thread):
    """The resident memory (VmRSS) of the process running in `cwd` (the measured command: its working directory is its own), every `interval_s`.

    `samples`: (seconds since `since`, MB). What wait4 gives is only the peak; this shows when it is reached,
    and whether memory comes back down between pairs or builds up.
    """

    def __init__(self, cwd: Path, since: dt.datetime, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cwd, self.since, self.interval_s = str(cwd.resolve()), since, interval_s
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def _find(self) -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "cwd") == self.cwd and b"backfill" in (entry / "cmdline").read_bytes():
                        return int(entry.name)
                except OSError:
                    continue
        return None

    def run(self) -> None:
        pid = None
        while not self._done.is_set():
            pid = pid or self._find()
            if pid is not None:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    return  # it exited
                rss = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)
                if rss is not None:
                    self.samples.append(((dt.datetime.now(dt.UTC) - self.since).total_seconds(), rss))
            self._done.wait(self.interval_s)

    def stop(self) -> list[tuple[float, float]]:
        self._done.set()
        self.join(timeout=5)
        return self.samples


def rss_as_pairs_finish(samples: list[tuple[float, float]], children: list[dict]) -> list[float]:
    """The process's RSS at the first sample after each child run ended, in the order they ended (MB)."""
    ends = sorted(c["end_s"] for c in children if c.get("end_s") is not None)
    return [next((mb for t, mb in samples if t >= end), samples[-1][1]) for end in ends] if samples else []


def run_backfill(
    name: str, plan: Plan, months: int, state_dir: Path, mode: str, server: PrefectServer, months_dir: Path, work: Path, logs: Path, code: Path | None
) -> dict:
    """One measured `taxiflow backfill ... --json` over the first `months` months, in `state_dir`; its stderr (the runs' logs) kept in `logs`.

    `name` is unique per run: its working directory and log file.
    """
    last = months_from(plan.first, months)[-1]
    cmd = [str(VENV_BIN / "taxiflow"), "backfill", "--taxi", "green", "--from", plan.first, "--to", last, "--mode", mode]
    cmd += ["--max-concurrency", str(plan.max_concurrency), "--model", plan.model, "--data-dir", str(months_dir), "--json"]
    env = base_env(TAXIFLOW_STATE_DIR=str(state_dir), PREFECT_API_URL=server.api_url)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    load_before = wait_for_quiet(MAX_OTHER_LOAD, plan.wait_quiet_s) if plan.wait_quiet_s > 0 else None
    (work / name).mkdir(parents=True)
    since = dt.datetime.now(dt.UTC)
    sampler = RssSampler(work / name, since)
    sampler.start()
    try:
        m = run_measured(cmd, env=env, cwd=work / name, server_cpu=server.cpu_s)
    finally:
        samples = sampler.stop()
        logs.mkdir(parents=True, exist_ok=True)
        if (work / name / "child.stderr").is_file():
            (logs / f"{name}.stderr").write_bytes((work / name / "child.stderr").read_bytes())
    result = json.loads(m.stdout.strip().splitlines()[-1])
    pairs = result["pairs"]
    statuses = Counter(p["status"] for p in pairs)
    prepared = state_dir / "prepared"
    prefect = prefect_runs(server.api_url, [p["pair"] for p in pairs], since)
    record = {
        "name": name,
        "months": months,
        "pairs": len(pairs),
        "mode": mode,
        "command": " ".join(cmd[1:]),
        "wall_s": m.wall_s,
        "s_per_pair": m.wall_s / len(pairs),
        "cpu_s": m.cpu_s,
        "peak_rss_mb": m.peak_rss_mb,
        "other_cpu_cores": m.other_cpu_cores,
        "load_before_cores": load_before,
        "server_cpu_s": m.server_cpu_s,
        "statuses": dict(statuses),
        "rmse": {p["pair"]: p["rmse"] for p in pairs},
        "versions": {p["pair"]: p["version"] for p in pairs},
        "promoted": [p["pair"] for p in pairs if p["promoted"]],
        "champion_version": result.get("champion_version"),
        # From the pairs' logs (the command prints them): months prepared now vs taken from the cache.
        "months_prepared_now": m.stderr.count("prepared now, cached for later runs"),
        "months_from_cache": m.stderr.count("prepared trips from the cache"),
        "prepared_cache_entries": len(list(prepared.glob("*.parquet"))) if prepared.is_dir() else 0,
        "prepared_cache_mb": sum(p.stat().st_size for p in prepared.glob("*")) / 1e6 if prepared.is_dir() else 0.0,
        "prefect": prefect,
        "rss_samples": [(round(t, 2), round(mb, 1)) for t, mb in samples],
        "rss_as_pairs_finish_mb": rss_as_pairs_finish(samples, prefect.get("children", [])),
        "prefect_server_after": server.memory(),
        "state_dir": str(state_dir),
    }
    flag = " (disturbed)" if m.other_cpu_cores > MAX_OTHER_LOAD else ""
    _log(
        f"{name}: {len(pairs)} pairs in {m.wall_s:.1f} s ({record['s_per_pair']:.2f} s/pair), peak RSS {m.peak_rss_mb:.0f} MB, "
        f"other load {m.other_cpu_cores:.2f} cores{flag}; {dict(statuses)}; "
        f"months prepared {record['months_prepared_now']}, from cache {record['months_from_cache']}"
    )
    return record


def expected_statuses(records: dict[str, dict]) -> list[str]:
    """What did not go as a backfill should: each problem in a line (none: empty)."""
    want = {"cold": "trained", "warm": "trained", "up_to_date": "up to date"}
    problems = []
    for name, record in records.items():
        status = want["cold" if name.startswith("growth") else name]
        if record["statuses"] != {status: record["pairs"]}:
            problems.append(f"{name}: statuses {record['statuses']}, expected all {status!r}")
        months, pairs = record["months"], record["pairs"]
        prepared_now, from_cache = record["months_prepared_now"], record["months_from_cache"]
        if name == "warm" and (prepared_now, from_cache) != (0, 2 * pairs):
            problems.append(f"warm: {prepared_now} month(s) prepared, {from_cache} from the cache; expected 0 and {2 * pairs}")
        elif status == "trained" and name != "warm" and (prepared_now, from_cache) != (months, 2 * pairs - months):
            problems.append(f"{name}: {prepared_now} month(s) prepared, {from_cache} from the cache; expected {months} and {2 * pairs - months}")
        elif name == "up_to_date" and prepared_now + from_cache:
            problems.append(f"up_to_date: months were prepared or loaded ({prepared_now} + {from_cache}); expected none")
        if record["other_cpu_cores"] > MAX_OTHER_LOAD:
            problems.append(f"{name}: other work kept {record['other_cpu_cores']:.2f} cores busy during the run (disturbed)")
    return problems


def rss_after_all_pairs(record: dict) -> float | None:
    """The command's RSS at the first sample after its last pair ended (MB): what it still holds once every pair is done."""
    ends = [c["end_s"] for c in record["prefect"].get("children", []) if c.get("end_s") is not None]
    after = [mb for t, mb in record.get("rss_samples", []) if ends and t >= max(ends)]
    return after[0] if after else None


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def growth_figures(points: list[dict]) -> dict:
    """Least-squares line wall = fixed + per_pair * pairs through the growth points; how far each is from it; the memory spread."""
    xs, ys = [float(p["pairs"]) for p in points], [p["wall_s"] for p in points]
    n = len(xs)
    intercept, slope = _line(xs, ys)
    residuals = [(y - (intercept + slope * x)) / y for x, y in zip(xs, ys, strict=True)]
    rss = [p["peak_rss_mb"] for p in points]
    retained = [rss_after_all_pairs(p) for p in points]
    known = [(x, r) for x, r in zip(xs, retained, strict=True) if r is not None]
    return {
        "points": n,
        "disturbed_points": sum(p["other_cpu_cores"] > MAX_OTHER_LOAD for p in points),
        "rss_after_all_pairs_mb": retained,
        # How much more the command still holds once all pairs are done, per extra pair (0: nothing builds up).
        "retained_mb_per_extra_pair": _line([x for x, _ in known], [r for _, r in known])[1] if len(known) >= 2 else None,
        "s_per_extra_pair": slope,
        "fixed_s": intercept,
        "max_relative_residual": max((abs(r) for r in residuals), default=0.0),
        "residuals": residuals,
        "time_linear": max(abs(r) for r in residuals) <= LINEAR_TOLERANCE if n >= 3 else None,  # two points always sit on their line
        "peak_rss_max_over_min": max(rss) / min(rss),
        "memory_flat": max(rss) / min(rss) <= FLAT_TOLERANCE,
    }


def run(plan: Plan, months_dir: Path, prefect_api: str | None, out: Path) -> dict:
    """Every run of `plan`; the runs' logs go to `out`/logs/."""
    started = time.perf_counter()
    from benchmarks.run import machine

    count = max(plan.months, *plan.growth)
    _log(f"building {count} synthetic months from {plan.first} in {months_dir}")
    data = build_months(count, months_dir, first=plan.first)
    results: dict = {
        "generated_at": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "months": plan.months,
            "growth_months": list(plan.growth),
            "model": plan.model,
            "max_concurrency": plan.max_concurrency,
            "first_month": plan.first,
            "wait_quiet_s": plan.wait_quiet_s,
            "max_other_load": MAX_OTHER_LOAD,
            "retries": plan.retries,
        },
        "data": {"directory": str(months_dir), "recipe": RECIPE, "months": data},
    }
    with tempfile.TemporaryDirectory(prefix="taxiflow-bench-backfill-") as tmp, prefect_server(prefect_api, Path(tmp)) as server:
        scratch = Path(tmp)
        results["prefect_server_before"] = server.memory()
        code = snapshot_code(scratch / "code") if plan.snapshot else None
        live = REPO / "src" / "taxiflow"
        results["code"] = {
            "snapshot": plan.snapshot,
            "imported_from": _imported_from(base_env(**({"PYTHONPATH": str(code)} if code else {}))),
            "core_digest": core_digest(code / "taxiflow" if code else live),
            "live_core_digest_before": core_digest(live),
            "git_head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        }

        def measured(name: str, months: int, mode: str, state_dir: Path | None = None) -> tuple[dict, Path]:
            """The scenario run (again, up to `plan.retries` times, while other work disturbs it: the least disturbed is kept) and its last state directory.

            `state_dir` None: a new one per run (cold); else the same one (a retry of warm or up to date
            finds the state they need: the cache and identical versions).
            """
            kept, attempts = None, []
            for attempt in range(1 + plan.retries):
                label = name if attempt == 0 else f"{name}-retry{attempt}"
                state = state_dir or scratch / f"state-{label}"
                record = run_backfill(label, plan, months, state, mode, server, months_dir, scratch / "runs", out / "logs", code)
                record |= {"name": name, "label": label, "live_core_digest_after": core_digest(live)}
                attempts.append({k: record[k] for k in ("label", "wall_s", "peak_rss_mb", "other_cpu_cores", "statuses")})
                kept = record if kept is None or record["other_cpu_cores"] < kept["other_cpu_cores"] else kept
                if record["other_cpu_cores"] <= MAX_OTHER_LOAD:
                    break
                if attempt < plan.retries:
                    _log(f"{label}: disturbed by other work ({record['other_cpu_cores']:.2f} cores): running it again")
            assert kept is not None
            return kept | {"attempts": attempts}, state

        cold, state = measured("cold", plan.months, "missing")
        scenarios = {
            "cold": cold,
            "warm": measured("warm", plan.months, "all", state)[0],
            "up_to_date": measured("up_to_date", plan.months, "missing", state)[0],
        }
        growth = []
        for months in sorted(plan.growth):
            # The cold run over these months is the same measurement.
            growth.append(scenarios["cold"] if months == plan.months else measured(f"growth_{months}", months, "missing")[0])
        results["prefect_server_after"] = server.memory()
    results["code"]["live_core_digest_after"] = core_digest(live)
    results["scenarios"] = scenarios
    results["growth"] = [g["name"] for g in growth]
    results["growth_runs"] = {g["name"]: g for g in growth if g["name"].startswith("growth")}
    derive(results)
    results["seconds"] = time.perf_counter() - started
    return results


def derive(results: dict) -> None:
    """The figures and the problems, from the runs in `results` (again with `--rewrite-report`)."""
    scenarios = results["scenarios"]
    cold, warm, fresh = scenarios["cold"], scenarios["warm"], scenarios["up_to_date"]
    growth = [(results["growth_runs"] | {"cold": cold})[name] for name in results["growth"]]
    results["figures"] = {
        "cold_over_warm": cold["wall_s"] / warm["wall_s"],
        "cold_over_up_to_date": cold["wall_s"] / fresh["wall_s"],
        "warm_saved_s_per_pair": (cold["wall_s"] - warm["wall_s"]) / cold["pairs"],
        "growth": growth_figures(growth),
        "worst_other_cpu_cores": max(r["other_cpu_cores"] for r in [*scenarios.values(), *growth]),
    }
    results["problems"] = expected_statuses(scenarios | results["growth_runs"])
    code = results["code"]
    if code["live_core_digest_after"] != code["live_core_digest_before"]:
        edited = "the runs used a copy taken at the start" if code["snapshot"] else "training keys changed between runs"
        results["problems"].append(f"src/taxiflow/core/ was edited during the benchmark ({edited})")


# --- the report ----------------------------------------------------------------------------------


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _flow(record: dict) -> str:
    flow_s = record["prefect"].get("backfill_flow_s")
    return f"{flow_s:.1f}" if flow_s else "-"


def _outside(record: dict) -> str:
    """Wall time outside the backfill flow run: interpreter, imports, MLflow preflight (a new store's schema), reaching Prefect, exit."""
    flow_s = record["prefect"].get("backfill_flow_s")
    return f"{record['wall_s'] - flow_s:.1f}" if flow_s else "-"


def _linear(verdict: bool | None) -> str:
    return "not judged (fewer than 3 points)" if verdict is None else "~linear" if verdict else "not linear"


def report(results: dict) -> str:
    s, sc, fig = results["settings"], results["scenarios"], results["figures"]
    growth_runs = {**results["growth_runs"], sc["cold"]["name"]: sc["cold"]}
    growth = [growth_runs[name] for name in results["growth"]]
    g = fig["growth"]
    m = results["machine"]
    code = results["code"]
    code_line = (
        f"a copy of src/taxiflow taken at the start (working tree at {code['git_head']} plus uncommitted edits; core/ digest {code['core_digest']})"
        if code["snapshot"]
        else f"the live working tree (at {code['git_head']} plus uncommitted edits)"
    )
    sources = ", ".join(f"{d['month']} <- {d['source'].removeprefix('green_tripdata_').removesuffix('.parquet')}" for d in results["data"]["months"])
    lines = [
        "# `taxiflow backfill`: cold vs warm, and growth with the number of months",
        "",
        f"{results['generated_at']}; {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB RAM; taxiflow {m['versions']['taxiflow']}, "
        f"prefect {m['versions']['prefect']}, mlflow {m['versions']['mlflow']}, xgboost-cpu {m['versions']['xgboost-cpu']}. "
        f"Model `{s['model']}`, `--max-concurrency {s['max_concurrency']}`, one Prefect server for every run (PREFECT_API_URL), "
        f"the default local MLflow store in each run's TAXIFLOW_STATE_DIR. Whole `taxiflow backfill --json` processes, one run each; "
        f"worst other load {fig['worst_other_cpu_cores']:.2f} cores. Benchmark took {results['seconds'] / 60:.1f} min. "
        f"Code: {code_line}.",
        "",
        f"Months: synthetic green {results['data']['months'][0]['month']}..{results['data']['months'][-1]['month']}, each every real trip of one "
        f"TLC month moved by whole months ({sources}).",
        "",
        f"## {sc['cold']['months']} months ({sc['cold']['pairs']} pairs)",
        "",
        "| run | mode | state | wall (s) | s / pair | backfill flow run (s) | outside it (s) | peak RSS (MB) | CPU (s) "
        "| months prepared / from cache | pairs | other load (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    states = {"cold": "new", "warm": "after cold", "up_to_date": "after warm"}
    for name, r in sc.items():
        statuses = ", ".join(f"{n} {k}" for k, n in r["statuses"].items())
        cells = [name.replace("_", " "), r["mode"], states[name], f"{r['wall_s']:.1f}", f"{r['s_per_pair']:.2f}", _flow(r), _outside(r)]
        cells += [_mb(r["peak_rss_mb"]), f"{r['cpu_s']:.1f}", f"{r['months_prepared_now']} / {r['months_from_cache']}", statuses, f"{r['other_cpu_cores']:.2f}"]
        lines.append(_row(cells))
    lines += [
        "",
        f"- cold / warm: **{fig['cold_over_warm']:.2f}x** ((cold - warm) / pairs = {fig['warm_saved_s_per_pair']:+.2f} s per pair: warm reads every month "
        "from the prepared-trips cache and finds the MLflow store's schema made and a champion to gate against)",
        f"- cold / up to date: **{fig['cold_over_up_to_date']:.1f}x**",
    ]
    for name, r in sc.items():
        c = r["prefect"]
        if c.get("child_count") and c.get("backfill_flow_s"):
            lines.append(
                f"- {name.replace('_', ' ')}: {c['child_count']} child `train` runs, each {c['child_median_s']:.1f} s median (min {c['child_min_s']:.1f}, "
                f"max {c['child_max_s']:.1f}, gate waits included); their sum is {c['child_sum_s'] / c['backfill_flow_s']:.2f}x the backfill flow run's time "
                f"(pairs running at once, on average; at most {s['max_concurrency']})"
            )
    for name, r in sc.items():
        if len(r.get("attempts", [])) > 1:
            runs = "; ".join(f"{a['wall_s']:.1f} s at {a['other_cpu_cores']:.2f} cores" for a in r["attempts"])
            lines.append(f"- {name.replace('_', ' ')}: disturbed by other work, run {len(r['attempts'])} times ({runs}); the least disturbed is shown")
    rmse = ", ".join(f"{pair.replace('->', ' -> ')}: {value:.4f}" for pair, value in sc["cold"]["rmse"].items() if value is not None)
    lines.append(f"- validation RMSE per pair (cold; warm retrains the same models): {rmse}")
    lines += [
        "",
        "## Growth: cold backfills",
        "",
        "| months | pairs | wall (s) | s / pair | off the line | backfill flow run (s) | outside it (s) | peak RSS (MB) | RSS once all pairs are done (MB) "
        "| CPU (s) | other load (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, residual, retained in zip(growth, g["residuals"], g["rss_after_all_pairs_mb"], strict=True):
        cells = [
            str(r["months"]),
            str(r["pairs"]),
            f"{r['wall_s']:.1f}",
            f"{r['s_per_pair']:.2f}",
            f"{residual:+.1%}" if g["time_linear"] is not None else "-",
            _flow(r),
            _outside(r),
        ]
        retained_cell = _mb(retained) if retained is not None else "-"
        lines.append(_row([*cells, _mb(r["peak_rss_mb"]), retained_cell, f"{r['cpu_s']:.1f}", f"{r['other_cpu_cores']:.2f}"]))
    caveat = (
        f" Not a clean reading: {g['disturbed_points']} of {g['points']} points ran while other work kept more than {MAX_OTHER_LOAD} cores busy"
        " (on 2 cores that slows XGBoost's two threads), and the load differed between them."
        if g["disturbed_points"]
        else ""
    )
    per_pair = g.get("retained_mb_per_extra_pair")
    lines += [
        "",
        f"- Least-squares line: wall = {g['fixed_s']:.1f} s + {g['s_per_extra_pair']:.2f} s x pairs; every point within "
        f"{g['max_relative_residual']:.1%} of it: time **{_linear(g['time_linear'])}** in pairs (threshold {LINEAR_TOLERANCE:.0%}).{caveat}",
        f"- Peak RSS, largest / smallest: {g['peak_rss_max_over_min']:.2f}x: memory **{'~flat' if g['memory_flat'] else 'grows'}** "
        f"(threshold {FLAT_TOLERANCE:g}x)"
        + (f"; once all pairs are done the command still holds {per_pair:.0f} MB more per extra pair (least squares)." if per_pair is not None else "."),
    ]
    for r in growth:
        if after_pairs := r.get("rss_as_pairs_finish_mb"):
            lines.append(
                f"- {r['months']} months: the command's RSS as each pair finished: {', '.join(_mb(v) for v in after_pairs)} MB "
                f"(sampled every 0.5 s; peak {_mb(r['peak_rss_mb'])} MB)"
            )
    before, after = results.get("prefect_server_before"), results.get("prefect_server_after")
    if before and after:
        lines.append(
            f"- Prefect server (all its processes): RSS {_mb(before['rss_mb'])} MB before the runs, {_mb(after['rss_mb'])} MB after them "
            f"(peak {_mb(after['peak_rss_mb'])} MB)."
        )
    if results["problems"]:
        lines += ["", "**Unexpected:**", ""] + [f"- {p}" for p in results["problems"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MONTHS} months, growth over {QUICK_GROWTH_MONTHS}, linear model, no waiting for a quiet machine"
    )
    parser.add_argument("--months", type=int, help=f"months of the cold/warm/up-to-date runs (default {MONTHS}; --quick: {QUICK_MONTHS})")
    parser.add_argument("--growth", help=f"months of the growth runs, comma-separated (default {','.join(map(str, GROWTH_MONTHS))})")
    parser.add_argument("--model", choices=("xgboost", "linear"), help="default xgboost; --quick: linear")
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--prefect-api", help="a running Prefect server's API URL (default: start one for the whole benchmark)")
    parser.add_argument("--wait-quiet-s", type=float, help="before each run, wait up to this long for the machine to fall quiet (default 120; --quick: 0)")
    parser.add_argument("--months-dir", type=Path, default=MONTHS_DIR, help="where the synthetic months are built (kept between runs)")
    parser.add_argument("--retries", type=int, help=f"runs again of a scenario other work disturbed (> {MAX_OTHER_LOAD} cores): default 1; --quick: 0")
    parser.add_argument(
        "--live-code", action="store_true", help="run src/taxiflow as it is at each run (default: a copy taken at the start, immune to edits meanwhile)"
    )
    parser.add_argument("--out", type=Path, help=f"default {OUT_DIR.relative_to(REPO)} (--quick: its quick/)")
    parser.add_argument("--rewrite-report", action="store_true", help="run nothing: derive the figures and write results.md again from --out's results.json")
    args = parser.parse_args(argv)
    if args.rewrite_report:
        out = args.out or (OUT_DIR / "quick" if args.quick else OUT_DIR)
        results = json.loads((out / "results.json").read_text())
        derive(results)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(text := report(results))
        print(text)
        return
    months = args.months or (QUICK_MONTHS if args.quick else MONTHS)
    growth = tuple(int(v) for v in args.growth.split(",")) if args.growth else (QUICK_GROWTH_MONTHS if args.quick else GROWTH_MONTHS)
    if months < 2 or min(growth) < 2:
        parser.error("a backfill needs at least 2 months")
    wait = args.wait_quiet_s if args.wait_quiet_s is not None else (0.0 if args.quick else 120.0)
    retries = args.retries if args.retries is not None else (0 if args.quick else 1)
    model = args.model or ("linear" if args.quick else "xgboost")
    plan = Plan(months, growth, model, args.max_concurrency, FIRST_MONTH, wait, not args.live_code, retries)
    out = args.out or (OUT_DIR / "quick" if args.quick else OUT_DIR)
    results = run(plan, args.months_dir.resolve(), args.prefect_api, out)
    results["settings"]["quick"] = args.quick
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (out / "results.md").write_text(text)
    _log(f"wrote {out}/results.json and results.md")
    print(text)


if __name__ == "__main__":
    main()
