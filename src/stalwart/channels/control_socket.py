"""The control socket: `stalwart status|stop|checkpoint` talk to a running supervisor.

A unix stream socket (mode 0600) in the runtime directory. Each connection sends
one JSON line and gets one JSON line back. Peers are checked with SO_PEERCRED:
root or the supervisor's own uid, nobody else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

from stalwart.paths import bind_private_socket

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
COMMANDS = ("status", "stop", "checkpoint")


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def allowed_uid(uid: int, own_uid: int) -> bool:
    return uid in (0, own_uid)


class Connection:
    """One client connection: accumulate a request line, answer it, close."""

    def __init__(self, sock: socket.socket, uid: int, allowed: bool) -> None:
        self.sock = sock
        self.uid = uid
        self.allowed = allowed
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_request(self) -> dict[str, Any] | None:
        """The request once complete; raises ValueError on a bad one, EOFError on hang-up."""
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return None
        if not data:
            raise EOFError
        self._buffer += data
        if len(self._buffer) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
        if b"\n" not in self._buffer:
            return None
        line = bytes(self._buffer).split(b"\n", 1)[0]
        request = json.loads(line)
        if not isinstance(request, dict) or request.get("cmd") not in COMMANDS:
            raise ValueError(f"unknown request; expected {{'cmd': one of {', '.join(COMMANDS)}}}")
        return request

    def respond(self, payload: dict[str, Any]) -> None:
        # Replies are small; a client that does not read within a second loses its answer.
        self.sock.settimeout(1.0)
        with contextlib.suppress(OSError):
            self.sock.sendall(json.dumps(payload, default=str).encode() + b"\n")
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ControlServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = bind_private_socket(path, socket.SOCK_STREAM)
        self.sock.listen(8)
        self._uid = os.getuid()

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Connection | None:
        """A new connection; its peer's uid decides whether its request will be served."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        uid = peer_uid(conn)
        connection = Connection(conn, uid, allowed_uid(uid, self._uid))
        if not connection.allowed:
            logger.warning("control: refusing requests from uid %d", uid)
        return connection

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def request(path: Path, cmd: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Client side: send one command, return the reply. Raises OSError if nobody listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks) or b"{}")
    if not isinstance(reply, dict):
        raise OSError("malformed reply from the supervisor")
    return reply
