"""A reverse proxy on 127.0.0.1 in front of a real server, injecting faults into chosen requests.

Used in front of a real MLflow tracking server to fail one step of registration, or to restart the
server while a request is in flight, without touching taxiflow's code.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}


@dataclass
class Rule:
    """When a request's method and path match, `respond` answers it instead of the upstream (None: forward)."""

    method: str
    path_contains: str
    respond: Callable[[], tuple[int, dict] | None]
    times: int = 1  # how many matching requests it applies to
    hits: int = 0


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status answered)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.method == method and rule.path_contains in path and rule.hits < rule.times:
                    rule.hits += 1
                    return rule
        return None


def mlflow_error(status: int, message: str, code: str = "INVALID_PARAMETER_VALUE") -> Callable[[], tuple[int, dict]]:
    """An answer in MLflow's REST error format (a 4xx is not retried by MLflow's client)."""
    return lambda: (status, {"error_code": code, "message": message})


def _handler(proxy: FaultProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            proxy.seen.append((self.command, self.path, status))
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client is gone (a test killed it)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rule = proxy.match(self.command, self.path)
            if rule is not None:
                injected = rule.respond()
                if injected is not None:
                    status, payload = injected
                    self._answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})
                    return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            try:
                response = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=60)
            except httpx.HTTPError as exc:
                self._answer(502, f"upstream unavailable: {exc}".encode(), {"Content-Type": "text/plain"})
                return
            out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
            self._answer(response.status_code, response.content, out)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str, rules: list[Rule] | None = None) -> Iterator[tuple[str, FaultProxy]]:
    """Yields (proxy URL, proxy); change `proxy.upstream` to point it at a restarted server."""
    proxy = FaultProxy(upstream=upstream.rstrip("/"), rules=list(rules or []))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", proxy
    finally:
        server.shutdown()
        server.server_close()
