"""Shared fixtures: every test is bounded and leaves no process, thread or temp file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

TOKEN_VAR = "STALWART_TEST_TOKEN"
"""Every process a test starts inherits this; a live process carrying it afterwards leaked."""


def processes_with_token(token: str) -> list[int]:
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `predicate` until true or fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_leaks(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VAR, token)
    # A private temp dir per test (for this process and its children): what is left in it
    # was left by the test, whatever other processes on the machine do in /tmp.
    private_tmp = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    threads_before = set(threading.enumerate())
    yield token
    leaked: list[int] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        leaked = processes_with_token(token)
        if not leaked:
            break
        time.sleep(0.02)
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    children = [c for c in psutil.Process().children(recursive=True) if c.status() != "zombie"]
    new_threads = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    new_temp = sorted(os.listdir(private_tmp))
    assert not leaked, f"processes left behind: {leaked}"
    assert not children, f"child processes left behind: {children}"
    assert not new_threads, f"threads left behind: {new_threads}"
    assert not new_temp, f"temp files left behind: {new_temp}"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short directory for sockets (AF_UNIX paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sw-rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
