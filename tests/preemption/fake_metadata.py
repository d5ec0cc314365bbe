"""A fake cloud metadata service on 127.0.0.1 for the watcher tests.

Routes map (method, path without query) to a `Reply` or to a function of the
`Request`; anything unrouted answers 404, as IMDS does. A `slow` reply is held
until the server stops, so it is slower than any client timeout without a
sleep; `drop` closes the connection without answering.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOW_HOLD_S = 10.0
"""Upper bound on holding a slow reply (the fixture's teardown releases it at once)."""


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | str = b""
    slow: bool = False
    drop: bool = False
    content_type: str = "text/plain"

    @property
    def data(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    """Header names in lower case."""
    body: bytes = b""


Route = Reply | Callable[[Request], Reply]


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so none outlives the fixture.
    daemon_threads = False
    block_on_close = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN: a name lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left makes the held reply fail to send: expected.
        pass


class FakeMetadata:
    """Start with `FakeMetadata.start()`, always `stop()` (the fixture does both)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-metadata",
        )

    @classmethod
    def start(cls) -> FakeMetadata:
        fake = cls()
        fake._thread.start()
        return fake

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=SLOW_HOLD_S)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, path: str, reply: Route) -> None:
        with self._lock:
            self.routes[(method, path)] = reply

    def seen(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            route = self.routes.get((request.method, request.path), Reply(404, "Not Found"))
        return route(request) if callable(route) else route

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parts.query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                reply = fake._answer(request)
                if reply.slow:
                    fake._release.wait(SLOW_HOLD_S)
                if reply.drop:
                    self.close_connection = True
                    return
                data = reply.data
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_PUT = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (the port was just freed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
