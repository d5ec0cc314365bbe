"""AWS IMDSv2 watcher against the fake metadata server."""

from __future__ import annotations

import calendar
import json

import pytest

from stalwart.preemption.aws import (
    INSTANCE_ACTION_PATH,
    REBALANCE_PATH,
    TOKEN_HEADER,
    TOKEN_PATH,
    TOKEN_REFRESH_MARGIN_S,
    TOKEN_TTL_HEADER,
    TOKEN_TTL_S,
    AwsWatcher,
    parse_instance_action,
)
from stalwart.preemption.model import NoticeKind, Provider
from stalwart.preemption.transport import BadResponse
from tests.preemption.fake_metadata import FakeMetadata, Reply, Request

NOW = 1_800_000_000.0
ACTION_TIME = "2026-11-25T15:04:05Z"
ACTION_UNIX = float(calendar.timegm((2026, 11, 25, 15, 4, 5)))


def watcher(metadata: FakeMetadata) -> AwsWatcher:
    return AwsWatcher(metadata.base_url, timeout_s=0.5)


def healthy(metadata: FakeMetadata) -> None:
    metadata.route("PUT", TOKEN_PATH, Reply(200, "token-1"))


def test_no_notice_uses_imdsv2_token(metadata: FakeMetadata) -> None:
    healthy(metadata)
    assert watcher(metadata).poll(NOW) is None
    (put,) = metadata.seen("PUT", TOKEN_PATH)
    assert put.headers[TOKEN_TTL_HEADER.lower()] == str(TOKEN_TTL_S)
    gets = metadata.seen("GET")
    assert [g.path for g in gets] == [INSTANCE_ACTION_PATH, REBALANCE_PATH]
    assert all(g.headers[TOKEN_HEADER.lower()] == "token-1" for g in gets)


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        ("terminate", NoticeKind.TERMINATE),
        ("stop", NoticeKind.STOP),
        ("hibernate", NoticeKind.HIBERNATE),
        ("reboot-someday", NoticeKind.TERMINATE),  # unknown: assume the worst
    ],
)
def test_instance_action_notice(metadata: FakeMetadata, action: str, kind: NoticeKind) -> None:
    healthy(metadata)
    body = json.dumps({"action": action, "time": ACTION_TIME})
    metadata.route("GET", INSTANCE_ACTION_PATH, Reply(200, body, content_type="application/json"))
    metadata.route("GET", REBALANCE_PATH, Reply(200, json.dumps({"noticeTime": ACTION_TIME})))
    notice = watcher(metadata).poll(NOW)
    assert notice is not None
    assert notice.provider is Provider.AWS and notice.kind is kind and not notice.advisory
    assert notice.deadline_unix == ACTION_UNIX
    assert notice.event_id == f"aws:instance-action:{action}:{ACTION_TIME}"
    # A binding notice wins; the advisory endpoint is not even asked.
    assert not metadata.seen("GET", REBALANCE_PATH)


def test_rebalance_is_advisory_without_deadline(metadata: FakeMetadata) -> None:
    healthy(metadata)
    metadata.route("GET", REBALANCE_PATH, Reply(200, '{"noticeTime": "2026-11-25T15:00:00Z"}'))
    notice = watcher(metadata).poll(NOW)
    assert notice is not None
    assert notice.kind is NoticeKind.REBALANCE and notice.advisory
    assert notice.deadline_unix is None
    assert notice.escalate_at_unix(5.0) is None


def test_token_is_cached_until_near_its_ttl(metadata: FakeMetadata) -> None:
    healthy(metadata)
    aws = watcher(metadata)
    for offset_s in (0.0, 1.0, TOKEN_TTL_S - TOKEN_REFRESH_MARGIN_S - 1):
        assert aws.poll(NOW + offset_s) is None
    assert len(metadata.seen("PUT", TOKEN_PATH)) == 1
    assert aws.poll(NOW + TOKEN_TTL_S - TOKEN_REFRESH_MARGIN_S) is None
    assert len(metadata.seen("PUT", TOKEN_PATH)) == 2


def test_401_refreshes_the_token_once(metadata: FakeMetadata) -> None:
    issued = iter(["old", "new", "newer"])
    metadata.route("PUT", TOKEN_PATH, lambda _: Reply(200, next(issued)))

    def instance_action(request: Request) -> Reply:
        if request.headers.get(TOKEN_HEADER.lower()) == "old":
            return Reply(401, "Unauthorized")
        return Reply(200, json.dumps({"action": "terminate", "time": ACTION_TIME}))

    metadata.route("GET", INSTANCE_ACTION_PATH, instance_action)
    aws = watcher(metadata)
    notice = aws.poll(NOW)
    assert notice is not None and notice.kind is NoticeKind.TERMINATE
    assert len(metadata.seen("PUT", TOKEN_PATH)) == 2
    tokens = [r.headers[TOKEN_HEADER.lower()] for r in metadata.seen("GET")]
    assert tokens == ["old", "new"]
    # The fresh token is cached.
    assert aws.poll(NOW + 1) == notice
    assert len(metadata.seen("PUT", TOKEN_PATH)) == 2


def test_persistent_401_gives_up_after_one_refresh(
    metadata: FakeMetadata, caplog: pytest.LogCaptureFixture
) -> None:
    healthy(metadata)
    metadata.route("GET", INSTANCE_ACTION_PATH, Reply(401, "Unauthorized"))
    with caplog.at_level("WARNING", logger="stalwart.preemption"):
        assert watcher(metadata).poll(NOW) is None
    assert len(metadata.seen("PUT", TOKEN_PATH)) == 2
    assert len(metadata.seen("GET", INSTANCE_ACTION_PATH)) == 2
    assert "http-401" in caplog.text


def test_token_timeout_mentions_the_hop_limit(
    metadata: FakeMetadata, caplog: pytest.LogCaptureFixture
) -> None:
    metadata.route("PUT", TOKEN_PATH, Reply(slow=True))
    with caplog.at_level("WARNING", logger="stalwart.preemption"):
        assert AwsWatcher(metadata.base_url, timeout_s=0.1).poll(NOW) is None
    assert "hop limit" in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>",
        b"[]",
        b'{"action": "terminate"}',
        b'{"action": "terminate", "time": "soon"}',
        b'{"action": 3, "time": "2026-11-25T15:04:05Z"}',
        b'{"time": "2026-11-25T15:04:05Z"}',
        b"\xff\xfe\x00",
    ],
)
def test_instance_action_garbage_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_instance_action(body)


def test_naive_time_is_utc() -> None:
    notice = parse_instance_action(b'{"action": "stop", "time": "2026-11-25T15:04:05"}')
    assert notice.deadline_unix == ACTION_UNIX
