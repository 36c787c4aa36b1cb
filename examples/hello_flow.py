"""Hello, Prefect: a flow that calls a named task and a named subflow, logging with `get_run_logger()`.

    python examples/hello_flow.py [NAME]

In the UI: flow run `hello-flow` with a `say-hello` task run and a `shout` subflow run nested under it.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task


@task(name="say-hello")
def say_hello(name: str) -> str:
    greeting = f"Hello, {name}!"
    get_run_logger().info("task says: %s", greeting)
    return greeting


@flow(name="shout")
def shout(text: str) -> str:
    loud = text.upper()
    get_run_logger().info("subflow shouts: %s", loud)
    return loud


@flow(name="hello-flow")
def hello_flow(name: str = "world") -> str:
    logger = get_run_logger()
    logger.info("greeting %s", name)
    greeting = say_hello(name)
    loud = shout(greeting)
    logger.info("done: %s / %s", greeting, loud)
    return loud


if __name__ == "__main__":
    print(hello_flow(*sys.argv[1:2]))
