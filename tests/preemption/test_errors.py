"""Every way a metadata service can fail: poll returns None, never raises, logs once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from stalwart.preemption import aws, azure, gcp
from stalwart.preemption.model import Watcher
from stalwart.preemption.transport import MAX_BODY_BYTES
from tests.preemption.fake_metadata import FakeMetadata, Reply, closed_port_url

NOW = 1_800_000_000.0
TIMEOUT_S = 0.2


@dataclass(frozen=True)
class Cloud:
    name: str
    make: Callable[[str], Watcher]
    healthy: Callable[[FakeMetadata], None]
    main_path: str
    """The request every poll makes (after any token)."""


def _aws_healthy(metadata: FakeMetadata) -> None:
    metadata.route("PUT", aws.TOKEN_PATH, Reply(200, "token"))


def _gcp_healthy(metadata: FakeMetadata) -> None:
    metadata.route("GET", gcp.PREEMPTED_PATH, Reply(200, "FALSE"))
    metadata.route("GET", gcp.MAINTENANCE_PATH, Reply(200, "NONE"))


def _azure_healthy(metadata: FakeMetadata) -> None:
    metadata.route("GET", azure.EVENTS_PATH, Reply(200, '{"DocumentIncarnation": 1, "Events": []}'))


CLOUDS = {
    "aws": Cloud(
        "aws",
        lambda url: aws.AwsWatcher(url, timeout_s=TIMEOUT_S),
        _aws_healthy,
        aws.INSTANCE_ACTION_PATH,
    ),
    "gcp": Cloud(
        "gcp",
        lambda url: gcp.GcpWatcher(url, timeout_s=TIMEOUT_S),
        _gcp_healthy,
        gcp.PREEMPTED_PATH,
    ),
    "azure": Cloud(
        "azure",
        lambda url: azure.AzureWatcher(url, timeout_s=TIMEOUT_S),
        _azure_healthy,
        azure.EVENTS_PATH,
    ),
}

FAILURES: list[tuple[str, str, str, Reply]] = [
    # (cloud, method, path, reply)
    *[
        (name, "GET", CLOUDS[name].main_path, reply)
        for name in CLOUDS
        for reply in (
            Reply(500, "Internal Server Error"),
            Reply(503, ""),
            Reply(slow=True),
            Reply(drop=True),
            Reply(200, "<html><body>captive portal</body></html>"),
            Reply(200, b"\xff\xfe\xfa garbage \x00"),
            Reply(200, b"x" * (MAX_BODY_BYTES + 1)),
        )
    ],
    ("aws", "PUT", aws.TOKEN_PATH, Reply(500, "")),
    ("aws", "PUT", aws.TOKEN_PATH, Reply(403, "Forbidden")),
    ("aws", "PUT", aws.TOKEN_PATH, Reply(200, "")),
    ("aws", "PUT", aws.TOKEN_PATH, Reply(slow=True)),
    ("aws", "GET", aws.INSTANCE_ACTION_PATH, Reply(200, '{"action": "terminate"}')),
    ("aws", "GET", aws.REBALANCE_PATH, Reply(200, "{not json")),
    ("aws", "GET", aws.REBALANCE_PATH, Reply(500, "")),
    ("gcp", "GET", gcp.PREEMPTED_PATH, Reply(404, "")),
    ("gcp", "GET", gcp.PREEMPTED_PATH, Reply(200, "MAYBE")),
    ("gcp", "GET", gcp.MAINTENANCE_PATH, Reply(500, "")),
    ("gcp", "GET", gcp.MAINTENANCE_PATH, Reply(200, "")),
    ("gcp", "GET", gcp.MAINTENANCE_PATH, Reply(slow=True)),
    ("azure", "GET", azure.EVENTS_PATH, Reply(200, '{"Events": "none"}')),
    ("azure", "GET", azure.EVENTS_PATH, Reply(200, '{"Events": [{"EventType": "Preempt"}]}')),
]


def _id(case: tuple[str, str, str, Reply]) -> str:
    cloud, method, path, reply = case
    what = "slow" if reply.slow else "drop" if reply.drop else f"{reply.status}:{reply.data[:12]!r}"
    return f"{cloud}-{method}-{path.rsplit('/', 1)[-1]}-{what}"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("case", FAILURES, ids=[_id(c) for c in FAILURES])
def test_failures_return_none_and_log_once(
    metadata: FakeMetadata, caplog: pytest.LogCaptureFixture, case: tuple[str, str, str, Reply]
) -> None:
    name, method, path, reply = case
    cloud = CLOUDS[name]
    cloud.healthy(metadata)
    metadata.route(method, path, reply)
    watcher = cloud.make(metadata.base_url)
    with caplog.at_level(logging.DEBUG, logger="stalwart.preemption"):
        results = [watcher.poll(NOW + i) for i in range(3)]
    assert results == [None, None, None]
    warnings = _warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert path in warnings[0].getMessage()


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_unreachable_service(name: str, caplog: pytest.LogCaptureFixture) -> None:
    watcher = CLOUDS[name].make(closed_port_url())
    with caplog.at_level(logging.WARNING, logger="stalwart.preemption"):
        assert [watcher.poll(NOW + i) for i in range(3)] == [None, None, None]
    (warning,) = _warnings(caplog)
    assert "unreachable" in warning.getMessage()


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_recovery_is_logged_and_rearms_the_warning(
    metadata: FakeMetadata, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    cloud = CLOUDS[name]
    cloud.healthy(metadata)
    watcher = cloud.make(metadata.base_url)
    with caplog.at_level(logging.INFO, logger="stalwart.preemption"):
        metadata.route("GET", cloud.main_path, Reply(500, ""))
        watcher.poll(NOW)
        watcher.poll(NOW + 1)
        cloud.healthy(metadata)
        if name == "aws":
            metadata.route("GET", cloud.main_path, Reply(404, ""))
        assert watcher.poll(NOW + 2) is None
        metadata.route("GET", cloud.main_path, Reply(500, ""))
        watcher.poll(NOW + 3)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "answers again after 2 failed poll(s)" in messages[1][1]


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_a_bug_in_a_watcher_is_caught_and_logged_once(
    metadata: FakeMetadata,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    cloud = CLOUDS[name]
    cloud.healthy(metadata)
    watcher = cloud.make(metadata.base_url)

    def broken(now_unix: float) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(watcher, "_check", broken)
    with caplog.at_level(logging.WARNING, logger="stalwart.preemption"):
        assert watcher.poll(NOW) is None
        assert watcher.poll(NOW + 1) is None
    (warning,) = _warnings(caplog)
    assert "simulated bug" in warning.getMessage() and warning.exc_info is not None


def test_a_failed_poll_does_not_withdraw_a_notice(
    metadata: FakeMetadata, caplog: pytest.LogCaptureFixture
) -> None:
    metadata.route("GET", gcp.PREEMPTED_PATH, Reply(200, "TRUE"))
    watcher = gcp.GcpWatcher(metadata.base_url, timeout_s=TIMEOUT_S)
    with caplog.at_level(logging.INFO, logger="stalwart.preemption"):
        first = watcher.poll(NOW)
        metadata.route("GET", gcp.PREEMPTED_PATH, Reply(500, ""))
        assert watcher.poll(NOW + 1) is None
        metadata.route("GET", gcp.PREEMPTED_PATH, Reply(200, "TRUE"))
        assert watcher.poll(NOW + 2) == first
    assert "withdrawn" not in caplog.text
    notices = [r for r in caplog.records if "terminate notice" in r.getMessage()]
    assert len(notices) == 1, "a notice is announced once"
