"""Helpers for the checkpoint tests: tiny checkpoints, ways to corrupt them, a child writer."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

from stalwart.checkpoint import CheckpointStore, Committed, FsOps

WRITER = Path(__file__).with_name("writer.py")


def save(root: Path, step: int, *, size_bytes: int = 10_000, ops: FsOps | None = None) -> Committed:
    """A small committed checkpoint with a nested file, content derived from the step."""
    pattern = f"step {step};".encode()
    body = (pattern * (size_bytes // len(pattern) + 1))[:size_bytes]
    return CheckpointStore(root, ops=ops).save_bytes(
        step, {"model.bin": body, "optim/state.bin": body[::-1][: size_bytes // 2]}
    )


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_byte(path: Path, offset: int | None = None) -> None:
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        at = size // 3 if offset is None else offset
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))


def zero_hole(path: Path, hole_bytes: int = 4096) -> None:
    with open(path, "r+b") as handle:
        handle.seek(1024)
        handle.write(b"\0" * hole_bytes)


def import_torch() -> ModuleType:
    """torch warns at import here (no numpy); the test config turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
    return torch


def read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """One line of a child's stdout, or fail after `timeout_s` (no blocking read)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not buffer.endswith(b"\n"):
            left_s = deadline - time.monotonic()
            if left_s <= 0 or not selector.select(left_s):
                raise TimeoutError(f"no line from the writer within {timeout_s} s: {buffer!r}")
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise EOFError(f"writer exited (rc {proc.wait(timeout=5)}) after {buffer!r}")
            buffer += chunk
    return buffer.decode().strip()


def start_writer(root: Path, step: int, size_bytes: int, stop_at: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(root), str(step), str(size_bytes), stop_at],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def kill_at(root: Path, step: int, size_bytes: int, stop_at: str) -> None:
    """Run the writer until `stop_at`, then SIGKILL it there and reap it."""
    proc = start_writer(root, step, size_bytes, stop_at)
    try:
        assert read_line(proc, timeout_s=20) == stop_at
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
