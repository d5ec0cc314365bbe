"""A local JSON endpoint on 127.0.0.1 that collects what apprise's `json://` posts, and a
black hole (accepts connections, never answers)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


class Collector:
    """Single-threaded HTTP server: each POST's JSON body is kept, in order."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = status
        self._changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with collector._changed:
                    collector.posts.append(body)
                    collector._changed.notify_all()
                self.send_response(collector.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def wait_for(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self.posts) < count and time.monotonic() < deadline:
                self._changed.wait(max(deadline - time.monotonic(), 0.0))
            return list(self.posts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class BlackHole:
    """A port on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])

    def url(self, read_timeout_s: float) -> str:
        return f"json://127.0.0.1:{self.port}/hook?rto={read_timeout_s:g}&cto=1"

    def close(self) -> None:
        self._sock.close()


def fields(post: dict[str, Any]) -> dict[str, str]:
    """`key: value` lines of a notification's message (continuations are skipped)."""
    found = {}
    for line in str(post["message"]).splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            found.setdefault(key, value)
    return found
