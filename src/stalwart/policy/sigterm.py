"""What a SIGTERM (or other stop signal) to the supervisor means: a preemption or a plain stop.

Pure; the evidence is gathered by `stalwart.preemption.shutdown.probe_shutdown`.
"""

from __future__ import annotations

import enum

from stalwart.types import ExitKind


class ShutdownEvidence(enum.Enum):
    SHUTTING_DOWN = "shutting-down"
    """systemd says `stopping`, or a shutdown marker exists."""
    RUNNING = "running"
    """systemd answered and the system is not going down."""
    UNKNOWN = "unknown"
    """Nobody to ask and no marker: a container, or a shutdown too fast to leave traces."""


def sigterm_meaning(
    *,
    sigterm_is_preemption: bool,
    evidence: ShutdownEvidence,
    notice_pending: bool = False,
) -> ExitKind:
    """Pure: PREEMPTED or STOPPED for a SIGTERM (or other stop signal) to the supervisor.

    A cloud notice already seen makes it a preemption whatever the config says.
    Otherwise the config must opt in, and then only a system known to be running
    (an operator's `systemctl stop`, a `kill`) makes it a plain stop.
    """
    if notice_pending:
        return ExitKind.PREEMPTED
    if not sigterm_is_preemption:
        return ExitKind.STOPPED
    if evidence is ShutdownEvidence.RUNNING:
        return ExitKind.STOPPED
    return ExitKind.PREEMPTED
