"""Local stand-ins for the public HTTP APIs the course's small flows called.

Everything binds to 127.0.0.1 on a free port, in a background thread of the calling process:

    with serve_json({"/fact": cat_fact_route()}) as base_url:
        httpx.get(f"{base_url}/fact").json()   # {"fact": "...", "length": ...}

A route is a callable `query -> (status, JSON-able payload)`. `FlakyRoute` fails deterministically
(the first N calls, then with a seeded probability) and records every status it answered.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

Route = Callable[[dict[str, list[str]]], tuple[int, Any]]

CAT_FACTS = (
    "Cats sleep for around 13 to 16 hours a day.",
    "A group of cats is called a clowder.",
    "Cats have five toes on their front paws and four on their back paws.",
)
DOG_FACTS = (
    "A dog's nose print is unique, much like a person's fingerprint.",
    "Dalmatian puppies are born completely white.",
    "Greyhounds can reach a speed of about 45 miles per hour.",
)


def _handler(routes: Mapping[str, Route]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep the example's output readable
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            route = routes.get(url.path)
            status, payload = route(parse_qs(url.query)) if route else (404, {"error": f"no route {url.path}"})
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serve_json(routes: Mapping[str, Route]) -> Iterator[str]:
    """Serve `routes` (path -> route) on 127.0.0.1 until the block exits; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(dict(routes)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="local-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def rotating_route(make_payload: Callable[[str], Any], items: tuple[str, ...]) -> Route:
    """A route answering 200 with `make_payload(item)`, cycling through `items` call after call."""
    cycle = itertools.cycle(items)
    lock = threading.Lock()

    def route(query: dict[str, list[str]]) -> tuple[int, Any]:
        with lock:
            item = next(cycle)
        return 200, make_payload(item)

    return route


def cat_fact_route() -> Route:
    """Shaped like https://catfact.ninja/fact: `{"fact": ..., "length": ...}`."""
    return rotating_route(lambda fact: {"fact": fact, "length": len(fact)}, CAT_FACTS)


def dog_fact_route() -> Route:
    """Shaped like https://dogapi.dog/api/v2/facts: `{"data": [{"attributes": {"body": ...}}]}`."""
    return rotating_route(lambda fact: {"data": [{"id": f"fact-{DOG_FACTS.index(fact)}", "type": "fact", "attributes": {"body": fact}}]}, DOG_FACTS)


class FlakyRoute:
    """A route that fails sporadically but deterministically.

    Call n (1-based) answers 503 when n <= `fail_first`, else 503 with probability `failure_rate`
    drawn from `random.Random(seed)` (the same seed gives the same sequence), else 200.
    """

    def __init__(self, fail_first: int = 0, failure_rate: float = 0.0, seed: int = 0) -> None:
        if fail_first < 0 or not 0.0 <= failure_rate < 1.0:
            raise ValueError("fail_first must be >= 0 and failure_rate in [0, 1)")
        self.fail_first = fail_first
        self.failure_rate = failure_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.statuses: list[int] = []

    def next_status(self) -> tuple[int, int]:
        """(call number, status) of the next call."""
        with self._lock:
            call = len(self.statuses) + 1
            failed = call <= self.fail_first or self._rng.random() < self.failure_rate
            self.statuses.append(503 if failed else 200)
            return call, self.statuses[-1]

    def __call__(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        call, status = self.next_status()
        if status != 200:
            return status, {"error": "sporadic failure, try again", "call": call}
        return 200, {"ok": True, "call": call}
