"""An S3 API on 127.0.0.1 for the remote tests: moto's WSGI app in a werkzeug server we
own, with a fault injector in front (500s, acknowledged-but-lost writes, held requests).

Stopping the server makes connections fail (refused), as an unreachable remote does;
starting it again on the same port brings the same data back (moto keeps it in memory).
"""

from __future__ import annotations

import functools
import io
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer

HOLD_LIMIT_S = 20.0
"""A held request is released after this even if the test never releases it."""

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Handler(MotoRequestHandler):
    # One request per connection: no keep-alive connection holds a handler thread open,
    # so server_close() can join every one of them.
    protocol_version = "HTTP/1.0"

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, BaseWSGIServer):
    multithread = True
    daemon_threads = False
    block_on_close = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN: a name lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a held request: expected

    def join_request_threads(self) -> None:
        # ThreadingMixIn keeps the request threads it started (block_on_close) in _threads.
        self._threads.join()  # type: ignore[attr-defined]


@dataclass
class Rule:
    """Requests whose method matches and whose path contains `path_part` get `action`."""

    method: str | None
    path_part: str
    action: str
    """"fail": answer 500; "lose": answer 200 without storing; "hold": wait for release."""
    times: int | None = None
    """How many matching requests it applies to (None: all)."""
    hits: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and self.path_part in path


class Faults:
    """Rules the server applies to incoming requests, and a count of what it did."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._rules: list[Rule] = []
        self.failed = 0

    def add(
        self,
        action: str,
        path_part: str = "",
        *,
        method: str | None = None,
        times: int | None = None,
    ) -> Rule:
        rule = Rule(method, path_part, action, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule (held requests go on)."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            rule.release.set()

    def release_all(self) -> None:
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            rule.release.set()

    def wait_failed(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` requests were failed on purpose."""
        with self._lock:
            return self._lock.wait_for(lambda: self.failed >= count, timeout=timeout_s)

    def match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    if rule.action == "fail":
                        self.failed += 1
                        self._lock.notify_all()
                    return rule
        return None


def _drain(environ: dict[str, Any]) -> None:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            break
        length -= len(chunk)


def faulty(app: WsgiApp, faults: Faults) -> WsgiApp:
    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        rule = faults.match(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        if rule is None:
            return app(environ, start_response)
        if rule.action == "hold":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            rule.arrived.set()
            rule.release.wait(HOLD_LIMIT_S)
            return app(environ, start_response)
        _drain(environ)
        if rule.action == "lose":
            start_response("200 OK", [("ETag", '"0"'), ("Content-Length", "0")])
            return [b""]
        body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return wrapped


@functools.cache
def moto_app() -> WsgiApp:
    """One moto application per process: building its S3 backend takes about a second."""
    app: WsgiApp = DomainDispatcherApplication(create_backend_app)
    return app


class S3Server:
    """moto's S3 on 127.0.0.1; `start()` then always `stop()` (the fixture does both)."""

    def __init__(self, port: int = 0) -> None:
        self.faults = Faults()
        self._app = faulty(moto_app(), self.faults)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> S3Server:
        server = _Server("127.0.0.1", self._port, self._app, handler=_Handler)
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="moto-s3"
        )
        self._thread.start()
        return self

    def quiesce(self) -> None:
        """Join the threads of the requests served so far (the server keeps serving)."""
        self.faults.release_all()
        if self._server is not None:
            self._server.join_request_threads()

    def stop(self) -> None:
        """Stop serving (connections are refused) and join every thread; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        self.faults.release_all()
        server.shutdown()
        server.server_close()
        thread.join()
