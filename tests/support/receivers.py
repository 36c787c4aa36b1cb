"""Real local receivers for notifications, on 127.0.0.1: a webhook endpoint and an SMTP server.

`webhook_receiver(mode)`: an HTTP server recording each POSTed JSON body; mode "ok" answers 200,
"500" answers 500, "hang" accepts and never answers (until the receiver closes). `down_url()` is
an address where nothing listens. `smtp_receiver()`: aiosmtpd, recording each message (optionally
requiring a login).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.servers import free_port


@dataclass
class Posted:
    path: str
    json: object
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    port: int
    mode: str
    posts: list[Posted] = field(default_factory=list)
    hanging: threading.Event = field(default_factory=threading.Event)  # set once a request is being held
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def record(self, posted: Posted) -> None:
        with self._lock:
            self.posts.append(posted)


def _webhook_handler(receiver: WebhookReceiver):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if receiver.mode == "hang":
                receiver.hanging.set()
                receiver.release.wait(60)
                self.close_connection = True
                return
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            receiver.record(Posted(self.path, payload, dict(self.headers)))
            status = 500 if receiver.mode == "500" else 200
            body = b"ok" if status == 200 else b"internal error"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def webhook_receiver(mode: str = "ok") -> Iterator[WebhookReceiver]:
    if mode not in ("ok", "500", "hang"):
        raise ValueError(f"mode must be ok, 500 or hang, got {mode!r}")
    receiver = WebhookReceiver(port=0, mode=mode)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _webhook_handler(receiver))
    server.daemon_threads = True
    server.block_on_close = False
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


def down_url(path: str = "/hook") -> str:
    """A URL on a port where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    login: str | None


@dataclass
class SmtpReceiver:
    port: int
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (username, accepted)


@contextlib.contextmanager
def smtp_receiver(*, username: str | None = None, password: str | None = None) -> Iterator[SmtpReceiver]:
    """An SMTP server recording messages; with `username`, it requires that login (AUTH over plain SMTP)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    receiver = SmtpReceiver(port=free_port())

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
            login = session.auth_data.login.decode() if session.authenticated and session.auth_data else None
            receiver.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message, login))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode()
        ok = login == username and auth_data.password.decode() == password
        receiver.logins.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)  # unhandled: aiosmtpd answers 535

    kwargs = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False} if username else {}
    controller = Controller(Handler(), hostname="127.0.0.1", port=receiver.port, **kwargs)
    controller.start()
    try:
        yield receiver
    finally:
        controller.stop()
