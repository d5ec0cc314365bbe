"""The notify protocol (trainer -> supervisor): datagrams of KEY=VALUE lines.

`parse` is pure; `NotifySocket` is the thin shell that receives datagrams.
Unknown keys are ignored; malformed lines are counted, logged once, never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from stalwart.paths import bind_private_socket

logger = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 64 * 1024
SO_TIMESTAMP = 29
"""Linux's SO_TIMESTAMP (not exported by the socket module); SCM_TIMESTAMP has the same value."""
SCM_TIMESTAMP = SO_TIMESTAMP
INT_KEYS = frozenset({"READY", "STEP", "CKPT_BEGIN", "CKPT_BYTES", "DONE", "RANK", "PEER_DRAIN"})
FLOAT_KEYS = frozenset({"CKPT_STALL_S", "CKPT_PERSIST_S"})
LOSS_KEY = "LOSS"
"""The training loss: any float, and also `nan`, `inf`, `-inf` (a non-finite loss is the
news itself, so this key alone is not malformed when not finite)."""
TEXT_KEYS = frozenset({"STATUS", "CKPT_DONE", "CKPT_TIER"})
KNOWN_KEYS = INT_KEYS | FLOAT_KEYS | TEXT_KEYS | {LOSS_KEY}
MAX_INT = 2**63 - 1
"""Integers are steps, byte counts and ranks: 0..MAX_INT (what an SQLite INTEGER holds)."""


@dataclass(frozen=True)
class Message:
    """One datagram: the recognised fields, and how many lines were malformed."""

    fields: dict[str, int | float | str] = field(default_factory=dict)
    malformed: int = 0
    received_unix: float | None = None
    """When the kernel queued the datagram (SO_TIMESTAMP); lets the loop read in batches."""


def parse(datagram: bytes) -> Message:
    """Integers outside 0..MAX_INT and floats that are negative or not finite are malformed
    (not `LOSS`: any float, `nan` and `inf` included)."""
    fields: dict[str, int | float | str] = {}
    malformed = 0
    for raw in datagram.decode("utf-8", errors="replace").split("\n"):
        if not raw.strip():
            continue
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or not key:
            malformed += 1
            continue
        if key not in KNOWN_KEYS:
            continue
        try:
            if key in INT_KEYS:
                integer = int(value)
                if not 0 <= integer <= MAX_INT:
                    raise ValueError(value)
                fields[key] = integer
            elif key in FLOAT_KEYS:
                number = float(value)
                if not (math.isfinite(number) and number >= 0):
                    raise ValueError(value)
                fields[key] = number
            elif key == LOSS_KEY:
                fields[key] = float(value)
            else:
                fields[key] = value
        except ValueError:
            malformed += 1
    return Message(fields, malformed)


def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            _pid, uid, _gid = struct.unpack("3i", data[:12])
            return int(uid)
    return None


def _received_unix(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMP and len(data) >= 16:
            seconds, microseconds = struct.unpack("ll", data[:16])
            return float(seconds) + float(microseconds) / 1e6
    return None


class NotifySocket:
    """A unix datagram socket (mode 0600) that the trainer's client sends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = bind_private_socket(path, socket.SOCK_DGRAM)
        # The kernel attaches each sender's credentials: other users cannot speak for the trainer.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        self._uid = os.getuid()
        self._cmsg_bytes = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(
            struct.calcsize("ll")
        )
        self.malformed_total = 0
        self.foreign_total = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[Message]:
        """Every datagram waiting now, parsed."""
        messages: list[Message] = []
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_DATAGRAM_BYTES, self._cmsg_bytes)
            except (BlockingIOError, InterruptedError):
                break
            sender_uid = _sender_uid(ancillary)
            if sender_uid is not None and sender_uid != self._uid:
                if self.foreign_total == 0:
                    logger.warning("ignoring notify datagrams from uid %d", sender_uid)
                self.foreign_total += 1
                continue
            message = dataclasses.replace(parse(data), received_unix=_received_unix(ancillary))
            if message.malformed:
                if self.malformed_total == 0:
                    logger.warning("malformed notify line(s) from the trainer: %r", data[:200])
                self.malformed_total += message.malformed
            messages.append(message)
        return messages

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
