"""The supervisor core's settings and its bookkeeping of the attempt, the drain and the notice."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stalwart.policy.deadlines import Due
from stalwart.types import Classification

# --- configuration and bookkeeping --------------------------------------------------------


@dataclass(frozen=True)
class CoreSettings:
    """The config values the core needs, as plain numbers."""

    name: str = "job"
    grace_s: float = 30.0
    kill_wait_s: float = 5.0
    started_after_s: float = 5.0
    drain_margin_s: float = 10.0
    peer_exit_s: float = 2.0
    chaos_enabled: bool = False
    chaos_min_s: float = 5.0
    chaos_max_s: float = 60.0
    chaos_max_kills: int = 10
    chaos_reason: str = "injected by chaos"


ATTEMPT_DEADLINES = (Due.RUNNING, Due.CHAOS, Due.PEER_EXIT, Due.ESCALATE, Due.KILL, Due.ABANDON)


@dataclass
class AttemptBook:
    """One attempt's bookkeeping, owned by the core."""

    number: int
    pid: int
    started_s: float
    stop_sent: bool = False
    killed: bool = False
    hang_killed: bool = False
    chaos_killed: bool = False
    escalate_grace_s: float | None = None


class DrainCause(enum.Enum):
    STOP = "stop"
    PREEMPTION = "preemption"
    INTERNAL = "internal error"


@dataclass
class Notice:
    label: str
    detail: str
    deadline_unix: float | None


@dataclass
class Pending:
    number: int
    status: str
    verdict: Classification
    uptime_s: float
