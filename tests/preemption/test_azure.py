"""Azure Scheduled Events watcher against the fake metadata server."""

from __future__ import annotations

import calendar
import json
import threading
from typing import Any

import pytest

from stalwart.preemption.azure import (
    API_VERSION,
    EVENTS_PATH,
    NAME_PATH,
    AzureWatcher,
    parse_events,
)
from stalwart.preemption.model import NoticeKind, PreemptionNotice, Provider
from stalwart.preemption.transport import BadResponse
from tests.preemption.fake_metadata import FakeMetadata, Reply

NOW = 1_800_000_000.0
NOT_BEFORE = "Mon, 19 Sep 2016 18:29:47 GMT"
NOT_BEFORE_UNIX = float(calendar.timegm((2016, 9, 19, 18, 29, 47)))


def event(
    event_id: str = "602d9444-d2cd-49c7-8624-8643e7171297",
    event_type: str = "Preempt",
    resources: list[str] | None = None,
    status: str = "Scheduled",
    not_before: str = NOT_BEFORE,
) -> dict[str, Any]:
    return {
        "EventId": event_id,
        "EventType": event_type,
        "ResourceType": "VirtualMachine",
        "Resources": ["trainer-0"] if resources is None else resources,
        "EventStatus": status,
        "NotBefore": not_before,
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


def document(*events: dict[str, Any]) -> Reply:
    body = json.dumps({"DocumentIncarnation": 3, "Events": list(events)})
    return Reply(200, body, content_type="application/json")


def watcher(metadata: FakeMetadata) -> AzureWatcher:
    return AzureWatcher(metadata.base_url, timeout_s=0.5)


def test_no_events(metadata: FakeMetadata) -> None:
    metadata.route("GET", EVENTS_PATH, document())
    assert watcher(metadata).poll(NOW) is None
    (request,) = metadata.seen()
    assert request.query == f"api-version={API_VERSION}"
    assert request.headers["metadata"] == "true"


@pytest.mark.parametrize("event_type", ["Preempt", "Terminate"])
def test_preempt_notice_with_deadline_from_not_before(
    metadata: FakeMetadata, event_type: str
) -> None:
    metadata.route("GET", EVENTS_PATH, document(event(event_type=event_type)))
    metadata.route("GET", NAME_PATH, Reply(200, "trainer-0"))
    notice = watcher(metadata).poll(NOW)
    assert notice is not None
    assert notice.provider is Provider.AZURE and notice.kind is NoticeKind.TERMINATE
    assert notice.deadline_unix == NOT_BEFORE_UNIX and not notice.advisory
    assert notice.event_id == "602d9444-d2cd-49c7-8624-8643e7171297"


def test_events_for_other_vms_are_ignored(metadata: FakeMetadata) -> None:
    metadata.route("GET", EVENTS_PATH, document(event(resources=["neighbour-3"])))
    metadata.route("GET", NAME_PATH, Reply(200, "Trainer-0\n"))
    azure = watcher(metadata)
    assert azure.poll(NOW) is None
    assert azure.poll(NOW + 1) is None
    assert len(metadata.seen("GET", NAME_PATH)) == 1, "the VM name is asked once"
    metadata.route("GET", EVENTS_PATH, document(event(resources=["TRAINER-0"])))
    assert azure.poll(NOW + 2) is not None


def test_unknown_vm_name_counts_every_event_as_ours(metadata: FakeMetadata) -> None:
    metadata.route("GET", EVENTS_PATH, document(event(resources=["neighbour-3"])))
    notice = watcher(metadata).poll(NOW)  # the name path answers 404
    assert notice is not None and notice.kind is NoticeKind.TERMINATE


def test_binding_event_beats_earlier_advisory_one(metadata: FakeMetadata) -> None:
    freeze = event("freeze-1", "Freeze", not_before="Mon, 19 Sep 2016 18:20:00 GMT")
    reboot = event("reboot-1", "Reboot", not_before="Mon, 19 Sep 2016 18:40:00 GMT")
    preempt = event("preempt-1", "Preempt")
    metadata.route("GET", EVENTS_PATH, document(freeze, reboot, preempt))
    notice = watcher(metadata).poll(NOW)
    assert notice is not None and notice.event_id == "preempt-1"

    metadata.route("GET", EVENTS_PATH, document(freeze))
    advisory = watcher(metadata).poll(NOW)
    assert advisory is not None and advisory.advisory
    assert advisory.kind is NoticeKind.MAINTENANCE


def test_started_event_without_not_before_is_due_now(metadata: FakeMetadata) -> None:
    metadata.route("GET", EVENTS_PATH, document(event(status="Started", not_before="")))
    notice = watcher(metadata).poll(NOW)
    assert notice is not None and notice.deadline_unix == NOW


def test_acknowledge_posts_a_start_request(metadata: FakeMetadata) -> None:
    metadata.route("GET", EVENTS_PATH, document(event()))
    metadata.route("POST", EVENTS_PATH, Reply(200, ""))
    azure = watcher(metadata)
    notice = azure.poll(NOW)
    assert notice is not None
    assert azure.acknowledge(notice)
    (post,) = metadata.seen("POST", EVENTS_PATH)
    assert json.loads(post.body) == {"StartRequests": [{"EventId": notice.event_id}]}
    assert post.query == f"api-version={API_VERSION}"
    assert post.headers["metadata"] == "true"
    assert post.headers["content-type"] == "application/json"


@pytest.mark.parametrize("reply", [Reply(500, "boom"), Reply(slow=True), Reply(drop=True)])
def test_failed_acknowledge_returns_false(
    metadata: FakeMetadata, reply: Reply, caplog: pytest.LogCaptureFixture
) -> None:
    metadata.route("POST", EVENTS_PATH, reply)
    notice = PreemptionNotice(Provider.AZURE, NoticeKind.TERMINATE, None, "test", "e-1")
    with caplog.at_level("WARNING", logger="stalwart.preemption"):
        assert not AzureWatcher(metadata.base_url, timeout_s=0.1).acknowledge(notice)
    assert "e-1" in caplog.text


def test_acknowledge_refuses_other_providers_notices(metadata: FakeMetadata) -> None:
    notice = PreemptionNotice(Provider.GCP, NoticeKind.TERMINATE, None, "test", "gcp:preempted")
    assert not watcher(metadata).acknowledge(notice)
    assert not metadata.seen()


def test_poll_and_acknowledge_from_two_threads(metadata: FakeMetadata) -> None:
    metadata.route("GET", EVENTS_PATH, document(event()))
    metadata.route("POST", EVENTS_PATH, Reply(200, ""))
    azure = watcher(metadata)
    first = azure.poll(NOW)
    assert first is not None
    polled: list[PreemptionNotice | None] = []

    def poll_many() -> None:
        polled.extend(azure.poll(NOW + i) for i in range(10))

    poller = threading.Thread(target=poll_many)
    poller.start()
    acknowledged = [azure.acknowledge(first) for _ in range(10)]
    poller.join(timeout=10)
    assert not poller.is_alive()
    assert polled == [first] * 10 and all(acknowledged)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"Events": {}}',
        b'{"Events": [1]}',
        b'{"Events": [{"EventType": "Preempt"}]}',
        b'{"Events": [{"EventId": "x", "EventType": "Preempt", "NotBefore": "soon"}]}',
        b'{"Events": [{"EventId": "x", "EventType": "Preempt", "Resources": "vm"}]}',
        b'{"Events": [{"EventId": "x", "EventType": "Preempt", "NotBefore": 5}]}',
        b"not json",
    ],
)
def test_malformed_documents_are_bad_responses(body: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_events(body, NOW, None)
