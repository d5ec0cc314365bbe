"""Azure: Scheduled Events from the Instance Metadata Service.

`GET /metadata/scheduledevents` lists upcoming events for every VM in the
same availability set or scale set placement group, so each event's
`Resources` is compared with this VM's name (asked once from IMDS; if that
fails every event counts as ours: a needless checkpoint beats a lost one).
Preempt and Terminate end the VM, Reboot and Redeploy end the trainer; Freeze
pauses it (advisory). After the drain, `acknowledge` POSTs a StartRequest so
the platform need not wait for `NotBefore`.

The first request enables Scheduled Events for the VM and may take up to two
minutes to answer; with a short timeout the first polls time out (logged
once) until it does.
"""

from __future__ import annotations

import json
import logging
import math
from email.utils import parsedate_to_datetime
from typing import Any

from stalwart.preemption.model import NoticeKind, PreemptionNotice, Provider, most_urgent
from stalwart.preemption.transport import (
    BadResponse,
    MetadataError,
    unexpected_status,
)
from stalwart.preemption.watcher import PollingWatcher, parsed

logger = logging.getLogger(__name__)

API_VERSION = "2020-07-01"
EVENTS_PATH = "/metadata/scheduledevents"
EVENTS_TARGET = f"{EVENTS_PATH}?api-version={API_VERSION}"
NAME_PATH = "/metadata/instance/compute/name"
NAME_TARGET = f"{NAME_PATH}?api-version=2021-02-01&format=text"
HEADERS = {"Metadata": "true"}

EVENT_KINDS: dict[str, tuple[NoticeKind, bool]] = {
    # EventType -> (kind, advisory)
    "Preempt": (NoticeKind.TERMINATE, False),
    "Terminate": (NoticeKind.TERMINATE, False),
    "Reboot": (NoticeKind.MAINTENANCE, False),
    "Redeploy": (NoticeKind.MAINTENANCE, False),
    "Freeze": (NoticeKind.MAINTENANCE, True),
}


def parse_not_before_unix(text: str) -> float:
    """RFC 1123 (`Mon, 19 Sep 2016 18:29:47 GMT`) -> unix time."""
    try:
        value = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise BadResponse(f"NotBefore is not an HTTP date: {text[:64]!r}") from None
    if not math.isfinite(value):
        raise BadResponse(f"NotBefore out of range: {text[:64]!r}")
    return value


def _event_notice(event: Any, now_unix: float, vm_name: str | None) -> PreemptionNotice | None:
    if not isinstance(event, dict):
        raise BadResponse(f"an event is not an object: {str(event)[:64]!r}")
    event_id = event.get("EventId")
    event_type = event.get("EventType")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise BadResponse(f"an event lacks EventId or EventType: {str(event)[:128]!r}")
    resources = event.get("Resources") or []
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise BadResponse(f"event {event_id}: Resources is not a list of names")
    if vm_name is not None and resources and vm_name.lower() not in {r.lower() for r in resources}:
        return None
    kind, advisory = EVENT_KINDS.get(event_type, (NoticeKind.MAINTENANCE, True))
    status = event.get("EventStatus")
    not_before = event.get("NotBefore") or ""
    if not isinstance(not_before, str):
        raise BadResponse(f"event {event_id}: NotBefore is not a string")
    if not_before.strip():
        deadline_unix: float | None = parse_not_before_unix(not_before)
    elif status == "Started":
        deadline_unix = now_unix
    else:
        deadline_unix = None
    return PreemptionNotice(
        provider=Provider.AZURE,
        kind=kind,
        deadline_unix=deadline_unix,
        detail=f"scheduled event {event_type} ({status}), not before {not_before or '-'}",
        event_id=event_id,
        advisory=advisory,
    )


def parse_events(body: bytes, now_unix: float, vm_name: str | None) -> list[PreemptionNotice]:
    """The notices for this VM in a Scheduled Events document."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadResponse(f"not JSON: {body[:64]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Events"), list):
        raise BadResponse(f"no Events list: {body[:128]!r}")
    notices = (_event_notice(event, now_unix, vm_name) for event in data["Events"])
    return [notice for notice in notices if notice is not None]


def acknowledgement_body(event_id: str) -> bytes:
    return json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()


class AzureWatcher(PollingWatcher):
    """Polls Scheduled Events; acknowledges an event once the trainer has drained."""

    provider = Provider.AZURE
    headers = HEADERS

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        super().__init__(base_url, timeout_s=timeout_s, log=logger)
        self._vm_name: str | None = None

    def _check(self, now_unix: float) -> PreemptionNotice | None:
        response = self._request("GET", EVENTS_TARGET)
        if response.status != 200:
            raise unexpected_status(EVENTS_PATH, response)
        # Parse before asking the name, so an empty list costs one request.
        notices = parsed(EVENTS_PATH, lambda: parse_events(response.body, now_unix, None))
        if not notices:
            return None
        vm_name = self._own_name()
        if vm_name is not None:
            notices = parsed(EVENTS_PATH, lambda: parse_events(response.body, now_unix, vm_name))
        return most_urgent(notices)

    def _own_name(self) -> str | None:
        if self._vm_name is None:
            try:
                response = self._request("GET", NAME_TARGET)
            except MetadataError as exc:
                logger.debug("azure: VM name unknown (%s); every event counts as ours", exc)
                return None
            name = response.body.decode("utf-8", errors="replace").strip()
            if response.status != 200 or not name or len(name) > 256:
                logger.debug(
                    "azure: VM name unknown (HTTP %d); every event counts as ours", response.status
                )
                return None
            self._vm_name = name
        return self._vm_name

    def acknowledge(self, notice: PreemptionNotice) -> bool:
        if notice.provider is not Provider.AZURE or not notice.event_id:
            return False
        with self._lock:
            try:
                response = self._request(
                    "POST",
                    EVENTS_TARGET,
                    headers={"Content-Type": "application/json"},
                    body=acknowledgement_body(notice.event_id),
                )
            except MetadataError as exc:
                logger.warning("azure: could not acknowledge event %s: %s", notice.event_id, exc)
                return False
            except Exception:
                logger.exception("azure: unexpected error acknowledging event %s", notice.event_id)
                return False
            if response.status != 200:
                logger.warning(
                    "azure: acknowledging event %s got HTTP %d", notice.event_id, response.status
                )
                return False
            logger.info("azure: acknowledged event %s", notice.event_id)
            return True
