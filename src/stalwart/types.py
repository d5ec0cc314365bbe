"""Plain data shared by the pure decisions and the OS shell."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Exit codes of `stalwart run` (a contract, see docs/architecture.md)."""

    OK = 0
    USAGE = 2
    GAVE_UP = 3
    SOFTWARE = 70
    """An internal error of the supervisor (EX_SOFTWARE): the trainer was drained first;
    a restart (systemd's) resumes the job."""
    PREEMPTED = 75


class ExitKind(enum.Enum):
    """What an attempt's end means. The first two are not failures."""

    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    PREEMPTED = "PREEMPTED"
    OOM = "OOM"
    HANG = "HANG"
    INFRA = "INFRA"
    USER_ERROR = "USER_ERROR"
    CHECKPOINT_CORRUPT = "CHECKPOINT_CORRUPT"
    DIVERGED = "DIVERGED"
    """The loss turned non-finite or spiked and stayed up; killed by the supervisor."""
    UNKNOWN = "UNKNOWN"

    @property
    def is_failure(self) -> bool:
        return self not in (ExitKind.COMPLETED, ExitKind.STOPPED)


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: exactly one of `code` and `signal` is set."""

    code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """Decode subprocess's convention (negative = killed by that signal)."""
        if returncode < 0:
            return cls(code=None, signal=-returncode)
        return cls(code=returncode, signal=None)

    @property
    def effective_signal(self) -> int | None:
        """The signal, also when a shell reported it as exit code 128+N."""
        if self.signal is not None:
            return self.signal
        if self.code is not None and 128 < self.code < 128 + 65:
            return self.code - 128
        return None

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        return f"exit code {self.code}"


@dataclass(frozen=True)
class Classification:
    """The verdict on one attempt's end."""

    kind: ExitKind
    retryable: bool
    reason: str


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class CheckpointState(enum.Enum):
    """What is known about one checkpoint on disk."""

    INTACT = "intact"
    """Passed verification (digests for managed or adopted ones, format checks for foreign)."""
    UNVERIFIED = "unverified"
    """Not checked (yet), or only partly: never assumed intact."""
    CORRUPT = "corrupt"
    """Failed verification; to be quarantined."""
    QUARANTINED = "quarantined"
    """Moved to .quarantine/; never resumed from."""
    STAGING = "staging"
    """A save that has not committed (or never will: removed at start)."""
