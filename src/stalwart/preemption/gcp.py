"""GCP: preemption and host maintenance from the Compute Engine metadata server.

`instance/preempted` turns TRUE when a Spot or preemptible VM is being
reclaimed; the guest then has about 30 s, so the deadline is the time this
watcher first saw TRUE plus `notice_s` (kept fixed while the notice lasts).
`instance/maintenance-event` names upcoming host maintenance: a migration is
advisory, a TERMINATE_ON_HOST_MAINTENANCE is binding.
"""

from __future__ import annotations

import logging

from stalwart.preemption.model import NoticeKind, PreemptionNotice, Provider
from stalwart.preemption.transport import BadResponse, unexpected_status
from stalwart.preemption.watcher import PollingWatcher, parsed

logger = logging.getLogger(__name__)

PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
MAINTENANCE_PATH = "/computeMetadata/v1/instance/maintenance-event"
HEADERS = {"Metadata-Flavor": "Google"}
NOTICE_S = 30.0
MAINTENANCE_NOTICE_S = 60.0
MAX_VALUE_CHARS = 128


def parse_word(body: bytes) -> str:
    """A one-word metadata value (`TRUE`, `NONE`, `MIGRATE_ON_HOST_MAINTENANCE`), upper case."""
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadResponse(f"not ASCII: {body[:64]!r}") from None
    if not text or len(text) > MAX_VALUE_CHARS or not all(c.isalnum() or c in "_-" for c in text):
        raise BadResponse(f"not a metadata value: {body[:64]!r}")
    return text.upper()


def parse_preempted(body: bytes) -> bool:
    word = parse_word(body)
    if word not in ("TRUE", "FALSE"):
        raise BadResponse(f"preempted is neither TRUE nor FALSE: {word[:64]!r}")
    return word == "TRUE"


def maintenance_is_advisory(value: str) -> bool:
    """Migrations pause the VM and keep it; anything that terminates it is binding."""
    return "TERMINATE" not in value


class GcpWatcher(PollingWatcher):
    """Polls the GCE metadata server; remembers when each notice was first seen."""

    provider = Provider.GCP
    headers = HEADERS

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        notice_s: float = NOTICE_S,
        maintenance_notice_s: float = MAINTENANCE_NOTICE_S,
    ) -> None:
        super().__init__(base_url, timeout_s=timeout_s, log=logger)
        self._notice_s = notice_s
        self._maintenance_notice_s = maintenance_notice_s
        self._preempted_since_unix: float | None = None
        # The maintenance value in effect and when it was first seen.
        self._maintenance: tuple[str, float] | None = None

    def _check(self, now_unix: float) -> PreemptionNotice | None:
        response = self._request("GET", PREEMPTED_PATH)
        if response.status != 200:
            raise unexpected_status(PREEMPTED_PATH, response)
        if parsed(PREEMPTED_PATH, lambda: parse_preempted(response.body)):
            if self._preempted_since_unix is None:
                self._preempted_since_unix = now_unix
            return PreemptionNotice(
                provider=Provider.GCP,
                kind=NoticeKind.TERMINATE,
                deadline_unix=self._preempted_since_unix + self._notice_s,
                detail="instance/preempted is TRUE",
                event_id="gcp:preempted",
            )
        self._preempted_since_unix = None
        return self._check_maintenance(now_unix)

    def _check_maintenance(self, now_unix: float) -> PreemptionNotice | None:
        response = self._request("GET", MAINTENANCE_PATH)
        if response.status != 200:
            raise unexpected_status(MAINTENANCE_PATH, response)
        value = parsed(MAINTENANCE_PATH, lambda: parse_word(response.body))
        if value == "NONE":
            self._maintenance = None
            return None
        if self._maintenance is None or self._maintenance[0] != value:
            self._maintenance = (value, now_unix)
        return PreemptionNotice(
            provider=Provider.GCP,
            kind=NoticeKind.MAINTENANCE,
            deadline_unix=self._maintenance[1] + self._maintenance_notice_s,
            detail=f"maintenance-event is {value}",
            event_id=f"gcp:maintenance:{value}",
            advisory=maintenance_is_advisory(value),
        )
