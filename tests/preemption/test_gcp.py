"""GCP metadata watcher against the fake metadata server."""

from __future__ import annotations

import pytest

from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH, GcpWatcher
from stalwart.preemption.model import NoticeKind, Provider
from tests.preemption.fake_metadata import FakeMetadata, Reply

NOW = 1_800_000_000.0


def watcher(metadata: FakeMetadata, notice_s: float = 30.0) -> GcpWatcher:
    return GcpWatcher(metadata.base_url, timeout_s=0.5, notice_s=notice_s)


def healthy(metadata: FakeMetadata) -> None:
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))


def test_no_notice_sends_the_flavor_header(metadata: FakeMetadata) -> None:
    healthy(metadata)
    assert watcher(metadata).poll(NOW) is None
    requests = metadata.seen("GET")
    assert [r.path for r in requests] == [PREEMPTED_PATH, MAINTENANCE_PATH]
    assert all(r.headers["metadata-flavor"] == "Google" for r in requests)


@pytest.mark.parametrize("notice_s", [30.0, 2.0])
def test_preempted_deadline_is_fixed_at_first_sight(
    metadata: FakeMetadata, notice_s: float
) -> None:
    healthy(metadata)
    gcp = watcher(metadata, notice_s)
    assert gcp.poll(NOW) is None
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE\n"))
    first = gcp.poll(NOW + 5)
    assert first is not None
    assert first.provider is Provider.GCP and first.kind is NoticeKind.TERMINATE
    assert not first.advisory
    assert first.deadline_unix == NOW + 5 + notice_s
    assert first.remaining_s(NOW + 5) == notice_s
    assert first.escalate_at_unix(1.0) == NOW + 5 + notice_s - 1.0
    # Later polls see the same notice, not a deadline that keeps moving away.
    assert gcp.poll(NOW + 10) == first
    # FALSE again (a new boot of the same watcher would not happen, but a retry might).
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    assert gcp.poll(NOW + 20) is None
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
    again = gcp.poll(NOW + 30)
    assert again is not None and again.deadline_unix == NOW + 30 + notice_s


@pytest.mark.parametrize(
    ("value", "advisory"),
    [
        ("TERMINATE_ON_HOST_MAINTENANCE", False),
        ("MIGRATE_ON_HOST_MAINTENANCE", True),
    ],
)
def test_maintenance_event(metadata: FakeMetadata, value: str, advisory: bool) -> None:
    healthy(metadata)
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, value))
    gcp = GcpWatcher(metadata.base_url, timeout_s=0.5, maintenance_notice_s=60.0)
    notice = gcp.poll(NOW)
    assert notice is not None
    assert notice.kind is NoticeKind.MAINTENANCE and notice.advisory is advisory
    assert notice.deadline_unix == NOW + 60.0
    assert notice.event_id == f"gcp:maintenance:{value}"
    assert gcp.poll(NOW + 7) == notice


def test_preempted_wins_over_maintenance(metadata: FakeMetadata) -> None:
    healthy(metadata)
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, "TERMINATE_ON_HOST_MAINTENANCE"))
    notice = watcher(metadata).poll(NOW)
    assert notice is not None and notice.event_id == "gcp:preempted"
