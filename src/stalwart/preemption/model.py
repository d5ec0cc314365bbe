"""The common model of a preemption notice, and the protocol every watcher implements.

A watcher turns one cloud's metadata service into `PreemptionNotice`s. It is
level-triggered: `poll` returns the notice in effect now (the same `event_id`
on every poll while it lasts), or None. Deciding what to do about a notice
(emergency checkpoint, drain, escalation, exit 75) is the supervisor's job.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Provider(enum.Enum):
    """Where a notice came from."""

    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    SIGNAL = "signal"
    """SIGTERM during a system shutdown (see `shutdown.py`); no watcher polls for it."""


class NoticeKind(enum.Enum):
    """What the cloud says will happen to this machine."""

    TERMINATE = "terminate"
    """The machine goes away (spot/preemptible reclaim, Azure Preempt or Terminate)."""
    STOP = "stop"
    """AWS stops the instance; the disk survives."""
    HIBERNATE = "hibernate"
    """AWS hibernates the instance; memory is saved, but the trainer's GPU state is not."""
    REBALANCE = "rebalance"
    """AWS says the instance is at elevated risk of interruption; advisory."""
    MAINTENANCE = "maintenance"
    """Host maintenance: a reboot, redeploy or terminate (not advisory) or a migration or
    freeze (advisory)."""


@dataclass(frozen=True)
class PreemptionNotice:
    """One notice from a cloud: what happens, by when, and how to acknowledge it."""

    provider: Provider
    kind: NoticeKind
    deadline_unix: float | None
    """When the machine goes away (unix time), if known."""
    detail: str
    """The provider's own words, for logs and the journal."""
    event_id: str
    """Stable while the notice lasts: use it to de-duplicate polls and to acknowledge."""
    advisory: bool = False
    """True when the trainer survives the event (rebalance, migration): checkpoint, no drain."""

    def remaining_s(self, now_unix: float) -> float | None:
        """Seconds until the deadline (negative once past), or None without one."""
        if self.deadline_unix is None:
            return None
        return self.deadline_unix - now_unix

    def escalate_at_unix(self, drain_margin_s: float) -> float | None:
        """When to stop waiting for a clean drain and escalate: the deadline less a margin."""
        if self.deadline_unix is None:
            return None
        return self.deadline_unix - drain_margin_s


def most_urgent(notices: Iterable[PreemptionNotice]) -> PreemptionNotice | None:
    """Binding notices before advisory ones, then the earliest deadline (unknown last)."""

    def urgency(notice: PreemptionNotice) -> tuple[bool, float]:
        deadline = notice.deadline_unix
        return (notice.advisory, math.inf if deadline is None else deadline)

    return min(notices, key=urgency, default=None)


class Watcher(Protocol):
    """Polls one cloud's metadata service. Safe to call from one thread other than its
    creator's; `poll` and `acknowledge` never raise and never act on the supervisor."""

    @property
    def provider(self) -> Provider: ...

    def poll(self, now_unix: float) -> PreemptionNotice | None:
        """The notice in effect now, or None (also when the metadata service fails)."""
        ...

    def acknowledge(self, notice: PreemptionNotice) -> bool:
        """Tell the cloud we are ready (after the drain), where its API allows.

        Returns True when the cloud accepted it; False when the API has no
        acknowledgement or the request failed (logged).
        """
        ...
