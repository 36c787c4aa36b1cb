"""`taxiflow serve` vs `mlflow models serve`, on the same registered champion, in interleaved rounds.

What a user would pick instead of taxiflow's service is MLflow's own scoring server on the same
registry URI. Both serve `models:/nyc-taxi-duration@champion` from one tracking server (trained here
on the real pair, green 2023-01 -> 2023-02, with the course's parameters); both get the same real
rides (green 2023-03) from wrk (closed loop, keep-alive):

- one ride per request, 8 connections: requests/s and p99 latency;
- 1,000 rides per request, 2 connections: rides/s and p99 latency;
- cold start: process start to the first 200 from `/ready` (taxiflow) or `/ping` (MLflow), and idle
  RSS of every process of each server (MLflow's CLI parent and its uvicorn worker both count).

Each round runs each load on one server, then on the other (the order alternates per round), so a
slow patch of the machine hits both; the report gives medians over rounds and the ratios.

    make bench-serving            # ~5 min: 3 rounds of 10 s per load and server
    .venv/bin/python -m benchmarks.serving.run [--rounds N] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl

from benchmarks.measure import wait_for_quiet
from benchmarks.pairs import REPO, shared_tlc_dir, tlc_name
from tests.support.servers import VENV_BIN, base_env, free_port, mlflow_server

MODEL = "nyc-taxi-duration"
OUT = REPO / "benchmarks" / "out" / "serving"
TARGETS = {
    "one_ride_throughput_ratio": ">= 4",
    "one_ride_p99_ratio": "<= 1/3",
    "batch_rides_per_s_ratio": ">= 1.5",
    "batch_p99_ms": "<= 100",
    "cold_start_s": "<= 3",
    "idle_rss_ratio": "<= 1/2",
}


@dataclass
class Load:
    name: str
    connections: int
    threads: int
    rides: int


LOADS = (Load("one_ride", 8, 2, 1), Load("batch_1000", 2, 2, 1000))


@dataclass
class Server:
    name: str
    cmd: list[str]
    ready_path: str
    predict_path: str
    env: dict[str, str]

    def body(self, rides: list[dict]) -> str:
        if self.name == "mlflow":
            return json.dumps({"dataframe_records": rides})
        return json.dumps(rides[0] if len(rides) == 1 else rides)


def _tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and every descendant (the whole server, however many processes it runs)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


@contextlib.contextmanager
def started(server: Server, port: int, log: Path) -> Iterator[tuple[str, float, subprocess.Popen]]:
    """The server, from process start to its first 200 on the readiness path: (url, cold start s, process)."""
    url = f"http://127.0.0.1:{port}"
    cmd = [part.replace("{port}", str(port)) for part in server.cmd]
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=server.env, start_new_session=True)
    try:
        with httpx.Client(timeout=2) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited with {process.returncode}: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{url}{server.ready_path}").status_code == 200:
                        break
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"{server.name} not ready after 120 s: {log.read_text()[-2000:]}")
                time.sleep(0.02)
        yield url, time.perf_counter() - t0, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(output: str) -> dict:
    """wrk --latency's report: requests/s, latency percentiles (ms), errors and non-2xx responses."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"not a wrk report:\n{output[-1500:]}")
    latency = {f"p{q}_ms": float(v) * _UNIT_MS[unit] for q, v, unit in _LATENCY.findall(output)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    return {
        "requests_per_s": float(rps.group(1)),
        "requests": int(requests.group(1)) if requests else None,
        **latency,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
    }


def run_wrk(url: str, load: Load, body: str, seconds: float, scratch: Path) -> dict:
    script = scratch / f"{load.name}.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n')
    cmd = ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    measured = parse_wrk(result.stdout)
    measured["rides_per_s"] = measured["requests_per_s"] * load.rides
    return measured


def train_champion(uri: str, scratch: Path) -> str:
    """One `taxiflow train` on the real pair (course parameters), registered and promoted (the first champion)."""
    env = base_env(TAXIFLOW_STATE_DIR=str(scratch / "state"), PREFECT_HOME=str(scratch / "prefect-home"), TAXIFLOW_LOCAL_PREFECT_IDLE_S="0")
    data_dir = shared_tlc_dir()
    cmd = [str(VENV_BIN / "taxiflow"), "train", "--taxi", "green", "--train-month", "2023-01", "--val-month", "2023-02"]
    cmd += ["--data-dir", str(data_dir), "--tracking-uri", uri, "--json"]
    result = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"training failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    if not summary.get("promoted"):
        raise RuntimeError(f"the trained version did not become champion: {summary}")
    return str(summary["model_version"])


def real_rides(count: int) -> list[dict]:
    """The first `count` complete rides of green 2023-03, in the TLC's column names."""
    frame = pl.read_parquet(shared_tlc_dir() / tlc_name("2023-03"), columns=["PULocationID", "DOLocationID", "trip_distance"]).drop_nulls()
    return frame.head(count).with_columns(pl.col("PULocationID", "DOLocationID").cast(pl.Int64)).to_dicts()


def servers(uri: str, scratch: Path) -> list[Server]:
    # `mlflow models serve` runs `uvicorn` by name: the environment's bin directory must be on PATH.
    mlflow_env = base_env(MLFLOW_TRACKING_URI=uri, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    taxiflow_env = base_env(TAXIFLOW_STATE_DIR=str(scratch / "serve-state"))
    return [
        Server(
            "mlflow",
            [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"],
            "/ping",
            "/invocations",
            mlflow_env,
        ),
        Server("taxiflow", [str(VENV_BIN / "taxiflow"), "serve", "--port", "{port}", "--tracking-uri", uri], "/ready", "/predict", taxiflow_env),
    ]


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def derive(results: dict) -> dict:
    m, t = results["servers"]["mlflow"], results["servers"]["taxiflow"]

    def med(server: dict, load: str, key: str) -> float:
        return _median(server["loads"][load], key)

    figures = {
        "one_ride_throughput_ratio": med(t, "one_ride", "requests_per_s") / med(m, "one_ride", "requests_per_s"),
        "one_ride_p99_ratio": med(t, "one_ride", "p99_ms") / med(m, "one_ride", "p99_ms"),
        "batch_rides_per_s_ratio": med(t, "batch_1000", "rides_per_s") / med(m, "batch_1000", "rides_per_s"),
        "batch_p99_ms": med(t, "batch_1000", "p99_ms"),
        "cold_start_s": statistics.median(t["cold_start_s"]),
        "idle_rss_ratio": statistics.median(t["idle_rss_mb"]) / statistics.median(m["idle_rss_mb"]),
    }
    figures["met"] = {
        "one_ride_throughput_ratio": figures["one_ride_throughput_ratio"] >= 4,
        "one_ride_p99_ratio": figures["one_ride_p99_ratio"] <= 1 / 3,
        "batch_rides_per_s_ratio": figures["batch_rides_per_s_ratio"] >= 1.5,
        "batch_p99_ms": figures["batch_p99_ms"] <= 100,
        "cold_start_s": figures["cold_start_s"] <= 3,
        "idle_rss_ratio": figures["idle_rss_ratio"] <= 0.5,
    }
    return figures


def report(results: dict) -> str:
    m, t, f = results["servers"]["mlflow"], results["servers"]["taxiflow"], results["figures"]

    def med(server: dict, load: str, key: str) -> float:
        return _median(server["loads"][load], key)

    lines = [
        f"# Serving benchmark ({results['finished']})",
        "",
        f"Model: `{MODEL}` v{results['model_version']} (course parameters, green 2023-01 -> 2023-02), rides from green 2023-03.",
        f"{results['rounds']} interleaved rounds of {results['seconds']:g} s per load and server; medians. wrk {results['wrk']}.",
        "",
        "| | `mlflow models serve` | `taxiflow serve` | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| 1 ride/request, 8 conns: requests/s | {med(m, 'one_ride', 'requests_per_s'):,.0f} | {med(t, 'one_ride', 'requests_per_s'):,.0f} "
        f"| **{f['one_ride_throughput_ratio']:.1f}x** | >= 4x {'✓' if f['met']['one_ride_throughput_ratio'] else '✗'} |",
        f"| 1 ride/request, 8 conns: p99 ms | {med(m, 'one_ride', 'p99_ms'):.1f} | {med(t, 'one_ride', 'p99_ms'):.1f} "
        f"| **{f['one_ride_p99_ratio']:.2f}** | <= 1/3 {'✓' if f['met']['one_ride_p99_ratio'] else '✗'} |",
        f"| 1,000 rides/request, 2 conns: rides/s | {med(m, 'batch_1000', 'rides_per_s'):,.0f} | {med(t, 'batch_1000', 'rides_per_s'):,.0f} "
        f"| **{f['batch_rides_per_s_ratio']:.1f}x** | >= 1.5x {'✓' if f['met']['batch_rides_per_s_ratio'] else '✗'} |",
        f"| 1,000 rides/request, 2 conns: p99 ms | {med(m, 'batch_1000', 'p99_ms'):.1f} | **{f['batch_p99_ms']:.1f}** | "
        f"| <= 100 ms {'✓' if f['met']['batch_p99_ms'] else '✗'} |",
        f"| cold start (process start -> ready), s | {statistics.median(m['cold_start_s']):.2f} | **{f['cold_start_s']:.2f}** | "
        f"| <= 3 s {'✓' if f['met']['cold_start_s'] else '✗'} |",
        f"| idle RSS, all processes, MB | {statistics.median(m['idle_rss_mb']):.0f} | {statistics.median(t['idle_rss_mb']):.0f} "
        f"| **{f['idle_rss_ratio']:.2f}** | <= 1/2 {'✓' if f['met']['idle_rss_ratio'] else '✗'} |",
        "",
        "Every response was a 200: " + ("yes" if results["all_ok"] else "**no** (see results.json)"),
    ]
    return "\n".join(lines) + "\n"


def run(rounds: int, seconds: float, out_dir: Path) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="taxiflow-bench-serving-") as tmp, mlflow_server(Path(tmp) / "mlflow") as uri:
        scratch = Path(tmp)
        print(f"training the champion on {uri} ...", flush=True)
        version = train_champion(uri, scratch)
        rides = {load.name: real_rides(load.rides) for load in LOADS}
        results: dict = {"model_version": version, "rounds": rounds, "seconds": seconds, "servers": {}}
        results["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n", 1)[0].strip()
        candidates = servers(uri, scratch)
        for server in candidates:
            results["servers"][server.name] = {"cold_start_s": [], "idle_rss_mb": [], "loads": {load.name: [] for load in LOADS}}
        for round_no in range(rounds):
            order = candidates if round_no % 2 == 0 else candidates[::-1]
            for server in order:
                record = results["servers"][server.name]
                load_before = wait_for_quiet(0.3, 60)
                with started(server, free_port(), scratch / f"{server.name}.log") as (url, cold_s, process):
                    time.sleep(1.0)  # idle: what the server holds with the model loaded, before any load
                    record["cold_start_s"].append(cold_s)
                    record["idle_rss_mb"].append(_tree_rss_mb(process.pid))
                    for load in LOADS:
                        body = server.body(rides[load.name])
                        # A short warm-up: first requests pay one-time costs (imports, caches) on both.
                        run_wrk(f"{url}{server.predict_path}", load, body, 2, scratch)
                        measured = run_wrk(f"{url}{server.predict_path}", load, body, seconds, scratch)
                        measured["machine_load_before"] = load_before
                        record["loads"][load.name].append(measured)
                        print(
                            f"round {round_no + 1} {server.name:<9}{load.name:<11}{measured['requests_per_s']:>9,.1f} req/s "
                            f"{measured['rides_per_s']:>10,.0f} rides/s  p99 {measured.get('p99_ms', float('nan')):.1f} ms",
                            flush=True,
                        )
                print(f"round {round_no + 1} {server.name:<9}cold start {cold_s:.2f} s, idle RSS {record['idle_rss_mb'][-1]:.0f} MB", flush=True)
        results["all_ok"] = all(
            m["non_2xx"] == 0 and m["socket_errors"] == 0 for s in results["servers"].values() for rows in s["loads"].values() for m in rows
        )
        results["figures"] = derive(results)
        results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(report(results))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration per load, server and round")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: checks the machinery, not performance")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rounds, seconds = (1, 3.0) if args.quick else (args.rounds, args.seconds)
    results = run(rounds, seconds, args.out)
    print(report(results))
    print(f"written to {args.out}/results.{{md,json}}")


if __name__ == "__main__":
    main()
