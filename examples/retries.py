"""Task retries: a task calling an HTTP endpoint that fails sporadically, retried up to 4 times.

    python examples/retries.py [--fail-first N] [--failure-rate P --seed S]

The script serves the flaky endpoint itself on 127.0.0.1 (a free port) and stops it afterwards.
It answers 503 to its first N calls (default 2), then with probability P from a seeded random
generator: deterministic, so the same options always take the same number of attempts. The task
has `retries=4` (5 attempts in all) and a short `retry_delay_seconds`: the flow returns and logs
how many attempts the call took, and the task run's `run_count` in the UI/API says the same.

More than 4 failures in a row exhaust the retries: the task and the flow fail, exit status 1.
Printed last: `attempts=<n> statuses=<status of each call the endpoint answered>`.
"""

from __future__ import annotations

import argparse
import sys

import httpx
from prefect import flow, get_run_logger, task
from prefect.runtime import task_run

RETRIES = 4


@task(name="call-flaky-endpoint", retries=RETRIES, retry_delay_seconds=0.2)
def call_flaky_endpoint(url: str) -> int:
    """GET `url`; a 5xx raises, which makes Prefect retry. Returns the attempt that succeeded."""
    attempt = task_run.run_count
    logger = get_run_logger()
    response = httpx.get(url, timeout=10)
    logger.info("attempt %d of %d: HTTP %d %s", attempt, RETRIES + 1, response.status_code, response.text)
    response.raise_for_status()
    return attempt


@flow(name="retries-flow")
def retries_flow(url: str) -> int:
    attempts = call_flaky_endpoint(url)
    get_run_logger().info("the flaky endpoint answered after %d attempt(s)", attempts)
    return attempts


def main(argv: list[str]) -> int:
    from _local_http import FlakyRoute, serve_json  # the local stand-in is only needed when run as a script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail-first", type=int, default=2, help="answer 503 to the first N calls (default 2)")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="then answer 503 with this probability (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the failure draws (default 0)")
    args = parser.parse_args(argv)

    try:
        endpoint = FlakyRoute(fail_first=args.fail_first, failure_rate=args.failure_rate, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    # The flow's return value, not `return_state=True` + `state.result()`: when the final state
    # comes back from the API (a slow server's reply), that state carries no result (MissingResult).
    with serve_json({"/flaky": endpoint}) as base_url:
        try:
            attempts = retries_flow(f"{base_url}/flaky")
        except Exception as exc:  # noqa: BLE001 - the last attempt's error, as the flow run failed with it
            statuses = ",".join(map(str, endpoint.statuses))
            reason = str(exc).splitlines()[0]
            print(f"failed after {len(endpoint.statuses)} attempts: {reason} statuses={statuses}", file=sys.stderr)
            return 1
    print(f"attempts={attempts} statuses={','.join(map(str, endpoint.statuses))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
