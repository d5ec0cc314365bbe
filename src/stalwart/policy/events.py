"""The supervisor core's vocabulary: the events it takes and the actions it returns.

Plain frozen records, no behaviour; see `stalwart.policy.lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass

from stalwart.policy.restart import Decision
from stalwart.types import Classification, ExitCode

# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The supervisor is set up: launch the first attempt."""

    now_s: float


@dataclass(frozen=True)
class ResumeReady:
    """The resume checkpoint is chosen and verified (off the loop): spawn now."""

    now_s: float


@dataclass(frozen=True)
class Launched:
    number: int
    pid: int
    now_s: float


@dataclass(frozen=True)
class LaunchFailed:
    number: int
    reason: str
    now_s: float


@dataclass(frozen=True)
class StopRequested:
    source: str
    """Who asked: a signal name ('SIGINT'), '`stalwart stop`', ...; a repeat from the same
    source escalates."""
    now_s: float


@dataclass(frozen=True)
class PreemptionNoticed:
    """A binding notice (advisory ones only ask for a checkpoint, in the shell)."""

    label: str
    """Who says so, e.g. 'gcp' or 'signal'."""
    detail: str
    deadline_unix: float | None
    now_s: float
    now_unix: float
    trainer_drains_itself: bool
    """The trainer heartbeats, so it reads the advice file and drains by itself."""


@dataclass(frozen=True)
class HangDetected:
    now_s: float


@dataclass(frozen=True)
class DivergenceDetected:
    """The loss diverged (NaN, a spike that stayed): SIGKILL now, so nothing more is saved."""

    now_s: float


@dataclass(frozen=True)
class StacksRequested:
    """Reply to `DumpStacks`: SIGKILL after `wait_s` (0 when nobody could dump)."""

    wait_s: float
    now_s: float


@dataclass(frozen=True)
class PeerDrained:
    """A worker saved and left because another node drained the job."""

    now_s: float


@dataclass(frozen=True)
class TrainerExited:
    number: int
    status: str
    """How it ended, in words ('exit code 1', 'SIGKILL')."""
    verdict: Classification
    uptime_s: float
    now_s: float


@dataclass(frozen=True)
class Decided:
    """Reply to `Decide`: the restart policy's (and the crash-loop rule's) decision."""

    number: int
    decision: Decision
    now_s: float


@dataclass(frozen=True)
class InternalError:
    detail: str
    now_s: float


@dataclass(frozen=True)
class Tick:
    now_s: float


Event = (
    Start
    | ResumeReady
    | Launched
    | LaunchFailed
    | StopRequested
    | PreemptionNoticed
    | HangDetected
    | DivergenceDetected
    | StacksRequested
    | PeerDrained
    | TrainerExited
    | Decided
    | InternalError
    | Tick
)

# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareResume:
    """Choose and verify the checkpoint to resume from, off the loop; reply `ResumeReady`."""


@dataclass(frozen=True)
class Spawn:
    """Start the next attempt now; reply `Launched` or `LaunchFailed`."""


@dataclass(frozen=True)
class SendStop:
    """The configured stop signal, once, to the trainer's group."""

    number: int


@dataclass(frozen=True)
class Kill:
    """SIGKILL to every process group of the trainer's tree."""

    number: int


@dataclass(frozen=True)
class InjectFault:
    """Chaos: the configured fault signal to the trainer's group."""

    number: int


@dataclass(frozen=True)
class DumpStacks:
    """Ask the trainer's processes for their stacks; reply `StacksRequested`."""

    number: int


@dataclass(frozen=True)
class Abandon:
    """The process survived SIGKILL for `kill_wait_s`: stop waiting for it."""

    number: int


@dataclass(frozen=True)
class Advise:
    """Tell the trainer to drain (advice file): save first if `checkpoint`."""

    checkpoint: bool = False
    deadline_unix: float | None = None


@dataclass(frozen=True)
class SystemdStopping:
    text: str
    extend_timeout_s: float


@dataclass(frozen=True)
class Decide:
    """Ask the restart policy (and crash-loop rule) what follows this failure."""

    number: int
    verdict: Classification
    uptime_s: float
    spend_budget: bool


@dataclass(frozen=True)
class Conclude:
    """Record the attempt's end (journal, interval model, log), exactly once per attempt."""

    number: int
    status: str
    verdict: Classification
    decision: Decision
    uptime_s: float


@dataclass(frozen=True)
class Finish:
    """The supervisor is done: exit with `code`; `completed`: the run is finished."""

    code: ExitCode
    message: str
    completed: bool = False
    gave_up: bool = False
    preempted_after: int | None = None
    """For a preemption: the attempt that drained (None: none was running)."""


ActionT = (
    PrepareResume
    | Spawn
    | SendStop
    | Kill
    | InjectFault
    | DumpStacks
    | Abandon
    | Advise
    | SystemdStopping
    | Decide
    | Conclude
    | Finish
)
