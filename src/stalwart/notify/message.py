"""What a notification says, and how often one is sent. Pure: records in, text out.

Each message names the job and the host, says what happened and why (the kind, the
reason, the last lines of output), what follows (the checkpoint the job resumes from, or
why it stopped), and the command to look further.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from stalwart.notify.config import NotifyEvent
from stalwart.observation import AttemptEnded, JobEnded, JobInfo
from stalwart.types import ExitCode, ExitKind

SEVERITY = {
    NotifyEvent.GAVE_UP: "failure",
    NotifyEvent.PREEMPTED: "warning",
    NotifyEvent.ROLLBACK: "warning",
    NotifyEvent.HANG_KILLED: "warning",
    NotifyEvent.SUPERVISOR_ERROR: "failure",
    NotifyEvent.COMPLETED: "success",
    NotifyEvent.FAILURE: "warning",
}
"""Apprise's notification types (`info`, `success`, `warning`, `failure`)."""

MAX_LINE_CHARS = 300


@dataclass(frozen=True)
class Message:
    event: NotifyEvent
    title: str
    body: str
    severity: str


def event_of_attempt(ended: AttemptEnded) -> NotifyEvent | None:
    """The most specific event an attempt's end is (one message per end), or None."""
    if ended.rolled_back is not None or (ended.diverged is not None and ended.action == "restart"):
        return NotifyEvent.ROLLBACK
    if ended.hang_killed or ended.kind is ExitKind.HANG:
        return NotifyEvent.HANG_KILLED
    if ended.kind.is_failure and ended.kind is not ExitKind.PREEMPTED:
        return NotifyEvent.FAILURE
    return None


def event_of_job(ended: JobEnded, completed: bool) -> NotifyEvent | None:
    if ended.code is ExitCode.GAVE_UP:
        return NotifyEvent.GAVE_UP
    if ended.code is ExitCode.PREEMPTED:
        return NotifyEvent.PREEMPTED
    if ended.code is ExitCode.SOFTWARE:
        return NotifyEvent.SUPERVISOR_ERROR
    if ended.code is ExitCode.OK and completed:
        return NotifyEvent.COMPLETED
    return None


def _look_further(job: JobInfo) -> str:
    return f"stalwart history {job.name} --state-dir {job.state_dir}"


def _checkpoint(path: str | None) -> str:
    return Path(path).name if path else "none yet (a fresh start)"


def _cause(ended: AttemptEnded | None, tail_lines: int) -> list[str]:
    if ended is None:
        return []
    lines = [
        f"cause: {ended.kind.value} ({ended.reason}); {ended.status} after "
        f"{ended.uptime_s:.1f} s, attempt {ended.number}"
    ]
    tail = [line.rstrip()[:MAX_LINE_CHARS] for line in ended.tail[-tail_lines:] if line.strip()]
    if tail_lines and tail:
        lines.append("last output:")
        lines += [f"  {line}" for line in tail]
    return lines


def _frame(
    job: JobInfo, event: NotifyEvent, what: str, body: list[str], suppressed: int
) -> Message:
    head = [f"job: {job.name} (run {job.run_id})", f"host: {job.host}", f"what happened: {what}"]
    tail = [f"look further: {_look_further(job)}"]
    if suppressed:
        tail.insert(0, f"({suppressed} earlier '{event.value}' notifications were suppressed)")
    return Message(
        event=event,
        title=f"stalwart: {job.name} on {job.host}: {event.value.replace('_', ' ')}",
        body="\n".join([*head, *body, *tail]),
        severity=SEVERITY[event],
    )


def attempt_message(
    job: JobInfo,
    event: NotifyEvent,
    ended: AttemptEnded,
    newest_checkpoint: str | None,
    *,
    tail_lines: int,
    suppressed: int = 0,
) -> Message:
    """A failed attempt, a hang killed, a crash-loop rollback."""
    if event is NotifyEvent.ROLLBACK and ended.diverged is not None:
        gone = ", ".join(ended.quarantined) if ended.quarantined else "none"
        what = (
            f"the loss diverged ({ended.diverged}); attempt {ended.number} was killed without "
            f"saving; quarantined as diverged: {gone}; the next attempt skips "
            f"{ended.skip_batches} batches"
        )
    elif event is NotifyEvent.ROLLBACK:
        what = (
            f"crash loop: every attempt resuming from {_checkpoint(ended.rolled_back)} failed; "
            "it was quarantined as poison"
        )
    elif event is NotifyEvent.HANG_KILLED:
        what = f"attempt {ended.number} hung (no heartbeat) and was killed"
    else:
        what = f"attempt {ended.number} failed"
    if ended.action == "restart":
        where = (
            "the previous intact checkpoint"
            if ended.rolled_back is not None or ended.quarantined
            else f"the newest intact checkpoint ({_checkpoint(newest_checkpoint)})"
        )
        follows = f"next: relaunch in {ended.delay_s:.1f} s from {where}"
        follows += f"; restart budget left: {ended.restart_budget_left}"
    else:
        follows = f"next: no relaunch ({ended.decision})"
    return _frame(job, event, what, [*_cause(ended, tail_lines), follows], suppressed)


def job_message(
    job: JobInfo,
    event: NotifyEvent,
    ended: JobEnded,
    last_failure: AttemptEnded | None,
    *,
    tail_lines: int,
    suppressed: int = 0,
) -> Message:
    """The job ended: gave up, preempted, completed, or a supervisor error."""
    checkpoint = _checkpoint(ended.newest_checkpoint)
    body: list[str] = []
    if event is NotifyEvent.COMPLETED:
        what = "training completed"
        body.append(f"newest checkpoint: {checkpoint}")
    elif event is NotifyEvent.PREEMPTED:
        what = "the machine is being preempted; the job stopped (exit 75)"
        body.append(f"stopped: {ended.message}")
        body.append(f"next: the next start resumes from {checkpoint}")
    elif event is NotifyEvent.SUPERVISOR_ERROR:
        what = "internal error in the supervisor; the trainer was drained (exit 70)"
        body.append(f"stopped: {ended.message}")
        body.append(f"next: a restart resumes from {checkpoint}")
    else:
        what = "gave up: the job is not relaunched any more (exit 3)"
        body += _cause(last_failure, tail_lines)
        body.append(f"stopped: {ended.message}")
        body.append(f"newest intact checkpoint: {checkpoint}")
    return _frame(job, event, what, body, suppressed)


def trial_message(job: JobInfo) -> Message:
    return Message(
        event=NotifyEvent.COMPLETED,
        title=f"stalwart: {job.name} on {job.host}: test notification",
        body="\n".join(
            [
                f"job: {job.name}",
                f"host: {job.host}",
                "what happened: a test notification (`stalwart notify test`)",
                f"look further: {_look_further(job)}",
            ]
        ),
        severity="info",
    )


class RateLimiter:
    """At most `limit` messages per event within a sliding `window_s`. Time comes in."""

    def __init__(self, limit: int, window_s: float) -> None:
        self._limit, self._window_s = limit, window_s
        self._sent: dict[NotifyEvent, deque[float]] = {}
        self._suppressed: dict[NotifyEvent, int] = {}

    def admit(self, event: NotifyEvent, now_s: float) -> int | None:
        """None: suppress it (counted). Else send it; the value is how many were suppressed
        since the last one of this event that was sent."""
        sent = self._sent.setdefault(event, deque())
        while sent and sent[0] <= now_s - self._window_s:
            sent.popleft()
        if len(sent) >= self._limit:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return None
        sent.append(now_s)
        return self._suppressed.pop(event, 0)

    def suppressed(self, event: NotifyEvent) -> int:
        return self._suppressed.get(event, 0)
