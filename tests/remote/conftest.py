"""Fixtures for the remote tests: moto's S3 on 127.0.0.1, used through s3fs as production
would, and a file:// remote. Nothing here reaches beyond 127.0.0.1: the credentials are
fake and set in the environment (botocore never asks the EC2 metadata service for them
or for a region), and every endpoint is the local server.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs  # type: ignore[import-untyped]

from stalwart.remote import Remote, RemoteConfig
from tests.remote.s3server import S3Server

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def storage_options(endpoint_url: str) -> dict[str, Any]:
    return {
        "client_kwargs": {"endpoint_url": endpoint_url},
        # One HTTP attempt per call: the retries under test are stalwart's, not botocore's.
        "config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}},
    }


def fast_config(url: str, options: dict[str, Any] | None = None, **overrides: Any) -> RemoteConfig:
    settings: dict[str, Any] = {
        "url": url,
        "storage_options": options or {},
        "retry_initial_s": 0.02,
        "retry_max_s": 0.1,
        "timeout_s": 5.0,
        "start_attempts": 2,
        "start_retry_s": 0.01,
    }
    settings.update(overrides)
    return RemoteConfig(**settings)


ALLOWED_HOST = "127.0.0.1"


class NetworkGuard:
    """Refuses (and records) every name lookup and connection not to 127.0.0.1, in every
    thread, so a test that forgets an endpoint fails instead of reaching the internet."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._getaddrinfo = socket.getaddrinfo
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex

    def _refuse(self, what: str) -> OSError:
        with self._lock:
            self.violations.append(what)
        return OSError(errno.ENETUNREACH, f"test network guard: {what} (only {ALLOWED_HOST})")

    def _check(self, sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != ALLOWED_HOST:
            raise self._refuse(f"connect to {address!r}")

    def install(self) -> None:
        guard = self

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in (None, ALLOWED_HOST, ALLOWED_HOST.encode()):
                raise socket.gaierror(socket.EAI_NONAME, str(guard._refuse(f"lookup {host!r}")))
            return guard._getaddrinfo(host, *args, **kwargs)

        def connect(sock: socket.socket, address: Any) -> None:
            guard._check(sock, address)
            guard._connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            guard._check(sock, address)
            return guard._connect_ex(sock, address)

        socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]

    def uninstall(self) -> None:
        socket.getaddrinfo = self._getaddrinfo
        socket.socket.connect = self._connect  # type: ignore[method-assign]
        socket.socket.connect_ex = self._connect_ex  # type: ignore[method-assign]

    def take(self) -> list[str]:
        with self._lock:
            found, self.violations = self.violations, []
        return found


NETWORK_GUARD = NetworkGuard()


@pytest.fixture
def network_guard() -> NetworkGuard:
    return NETWORK_GUARD


@pytest.fixture(autouse=True)
def _only_localhost() -> Iterator[None]:
    """Installed for each remote test only (other tests may look up names of their own)."""
    NETWORK_GUARD.take()
    NETWORK_GUARD.install()
    try:
        yield
    finally:
        NETWORK_GUARD.uninstall()
    violations = NETWORK_GUARD.take()
    assert not violations, f"the test tried to reach beyond {ALLOWED_HOST}: {violations}"


@pytest.fixture(scope="session", autouse=True)
def _aws_env() -> Iterator[None]:
    """Fake credentials for the whole session."""
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def shared_s3(_aws_env: None) -> Iterator[S3Server]:
    """One server for the tests that do not stop it. Its s3fs instance (and the s3fs event
    loop thread) is made here, once, before any test counts threads: a new botocore client
    costs about half a second."""
    server = S3Server().start()
    try:
        NETWORK_GUARD.install()
        try:
            config = fast_config("s3://warm", storage_options(server.endpoint_url))
            Remote.from_config(config).fs.mkdir(f"warm-{uuid.uuid4().hex[:8]}")
        finally:
            NETWORK_GUARD.uninstall()
        assert not NETWORK_GUARD.take()
        yield server
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_server(shared_s3: S3Server) -> Iterator[S3Server]:
    """The shared server, its fault rules cleared and its request threads joined after."""
    try:
        yield shared_s3
    finally:
        shared_s3.faults.clear()
        shared_s3.quiesce()


@pytest.fixture
def own_s3_server(_aws_env: None) -> Iterator[S3Server]:
    """A server of the test's own, which it may stop and start again."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def new_bucket(server: S3Server) -> RemoteConfig:
    """A fresh bucket on `server`, and a remote config pointing at a prefix in it."""
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    config = fast_config(f"s3://{bucket}/run-a", storage_options(server.endpoint_url))
    Remote.from_config(config).fs.mkdir(bucket)
    return config


@pytest.fixture
def s3_config(s3_server: S3Server) -> RemoteConfig:
    return new_bucket(s3_server)


@pytest.fixture
def s3_remote(s3_config: RemoteConfig) -> Remote:
    return Remote.from_config(s3_config)


@pytest.fixture
def file_config(tmp_path: Path) -> RemoteConfig:
    return fast_config(f"file://{tmp_path / 'remote'}")


@pytest.fixture(params=["s3", "file"])
def any_config(request: pytest.FixtureRequest) -> RemoteConfig:
    """The same test against the S3 server and a file:// remote."""
    name = "s3_config" if request.param == "s3" else "file_config"
    config: RemoteConfig = request.getfixturevalue(name)
    return config
