"""Fixtures for the preemption tests: a fake metadata server, and a guard that
fails any test whose code tries to reach an address other than 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.preemption.fake_metadata import FakeMetadata

ALLOWED_HOSTS = frozenset({"127.0.0.1"})


@pytest.fixture(autouse=True)
def only_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) any connection or name lookup for a host other than 127.0.0.1.

    The watchers swallow errors by design, so refusing alone would hide a stray
    request; the recorded attempts fail the test at teardown.
    """
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(address: Any) -> bool:
        if isinstance(address, tuple):
            return str(address[0]) in ALLOWED_HOSTS
        return isinstance(address, (str, bytes))  # AF_UNIX paths stay on this machine

    def connect(self: socket.socket, address: Any) -> None:
        if not allowed(address):
            attempts.append(f"connect {address!r}")
            raise OSError(f"test guard: connection to {address!r} refused")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not allowed(address):
            attempts.append(f"connect_ex {address!r}")
            raise OSError(f"test guard: connection to {address!r} refused")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and str(host) not in ALLOWED_HOSTS:
            attempts.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"test guard: lookup of {host!r} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"code under test tried to leave 127.0.0.1: {attempts}"


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    fake = FakeMetadata.start()
    try:
        yield fake
    finally:
        fake.stop()
