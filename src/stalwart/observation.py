"""What the supervisor tells its observers (notifications, metrics): plain records, one hook.

The loop calls one `Observer` at the points where something it already decides happens
(an attempt started or ended, a checkpoint, a heartbeat, a preemption notice, the end of
the job). Observers only record and hand work to their own threads: none may block the
loop or raise into it (`Fanout` logs and swallows what they raise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stalwart.types import ExitCode, ExitKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobInfo:
    """Who is supervised, where (set once, at setup)."""

    name: str
    host: str
    run_id: str
    state_dir: Path
    ckpt_dir: Path
    max_restarts: int
    """The restart budget within its window."""


@dataclass(frozen=True)
class AttemptStarted:
    number: int
    resume_from: str
    """The checkpoint it resumes from (its path), or empty for a fresh start."""
    resume_step: int | None
    resume_written_unix: float | None
    """When that checkpoint was written (its mtime), if known."""
    now_unix: float


@dataclass(frozen=True)
class AttemptEnded:
    """One attempt's end as classified and decided, with what a person needs to know."""

    number: int
    kind: ExitKind
    retryable: bool
    reason: str
    status: str
    """How the process ended (`exit code 1`, `killed by SIGKILL`)."""
    uptime_s: float
    tail: tuple[str, ...]
    """The last lines of its output."""
    resumed_from: str
    action: str
    """What follows: `restart`, `finish` or `give_up`."""
    decision: str
    """Why (the restart policy's reason)."""
    delay_s: float
    hang_killed: bool
    rolled_back: str | None
    """The checkpoint quarantined as poison after this end (crash-loop rollback), if any."""
    restart_budget_left: int
    work_lost_s: float
    """Training time since the attempt's last checkpoint (or its start): redone later."""
    newest_checkpoint: str | None
    """The newest checkpoint known to be intact (a relaunch resumes from it)."""
    now_unix: float
    diverged: str | None = None
    """The loss diverged (described): the attempt was killed for it."""
    quarantined: tuple[str, ...] = ()
    """What its divergence rollback quarantined as `diverged` (empty: none, or no rollback)."""
    skip_batches: int = 0
    """Batches the next attempt skips past its resume checkpoint (a divergence rollback)."""


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint the trainer reported, or one seen written in the checkpoint dir."""

    step: int | None
    path: str | None
    size_bytes: int | None
    stall_s: float | None
    persist_s: float | None
    source: str
    """`trainer` (a save report) or `observed` (the directory watcher)."""
    now_unix: float


@dataclass(frozen=True)
class IntervalAdvised:
    """The advised checkpoint interval and the estimates it came from."""

    interval_s: float
    ckpt_s: float | None
    """C: the save cost (stall quantile)."""
    persist_s: float | None
    restart_s: float | None
    mtbf_s: float
    """M: the mean time between failures estimated."""
    reason: str


@dataclass(frozen=True)
class Preempted:
    provider: str
    detail: str
    deadline_unix: float | None
    now_unix: float


@dataclass(frozen=True)
class JobEnded:
    code: ExitCode
    message: str
    newest_checkpoint: str | None
    """The newest checkpoint known to be intact: what the next start resumes from."""
    now_unix: float


class Observer:
    """Told what happens; never blocks, never acts on the job. Every hook is a no-op here:
    an observer overrides the ones it cares about."""

    def job_started(self, job: JobInfo) -> None:
        return None

    def state_changed(self, state: str) -> None:
        return None

    def attempt_started(self, started: AttemptStarted) -> None:
        return None

    def heartbeat(self, step: int | None, now_s: float) -> None:
        """`now_s` is monotonic: heartbeats are many, their age is what matters."""

    def checkpoint_saved(self, saved: CheckpointSaved) -> None:
        return None

    def interval_advised(self, advised: IntervalAdvised) -> None:
        return None

    def preempted(self, notice: Preempted) -> None:
        return None

    def attempt_ended(self, ended: AttemptEnded) -> None:
        return None

    def job_ended(self, ended: JobEnded) -> None:
        return None

    def close(self) -> None:
        """Deliver what is pending (bounded), stop threads and listeners."""


class Fanout(Observer):
    """Several observers as one; what one raises is logged once per hook and swallowed."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)
        self._failed: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.observers)

    def _each(self, hook: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                key = f"{type(observer).__name__}.{hook}"
                if key not in self._failed:
                    self._failed.add(key)
                    logger.exception("observer %s failed (ignored; supervision goes on)", key)

    def job_started(self, job: JobInfo) -> None:
        self._each("job_started", job)

    def state_changed(self, state: str) -> None:
        self._each("state_changed", state)

    def attempt_started(self, started: AttemptStarted) -> None:
        self._each("attempt_started", started)

    def heartbeat(self, step: int | None, now_s: float) -> None:
        self._each("heartbeat", step, now_s)

    def checkpoint_saved(self, saved: CheckpointSaved) -> None:
        self._each("checkpoint_saved", saved)

    def interval_advised(self, advised: IntervalAdvised) -> None:
        self._each("interval_advised", advised)

    def preempted(self, notice: Preempted) -> None:
        self._each("preempted", notice)

    def attempt_ended(self, ended: AttemptEnded) -> None:
        self._each("attempt_ended", ended)

    def job_ended(self, ended: JobEnded) -> None:
        self._each("job_ended", ended)

    def close(self) -> None:
        self._each("close")
