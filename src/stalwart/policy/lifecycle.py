"""The supervisor's core, sans I/O: events in, actions out (after h11 and wsproto).

`Lifecycle` owns what an attempt goes through: launching, running, a stop request, a
preemption drain, the escalation from the stop signal to SIGKILL, giving up on a process
that cannot be reaped, the restart decision's outcome, and the exit code. It has no
sockets, processes, files or clock: the shell (`stalwart.supervisor`) turns the world into
events (`StopRequested`, `PreemptionNoticed`, `TrainerExited`, `Tick`, ...) and carries out
the actions (`Spawn`, `SendStop`, `Kill`, `Advise`, `Conclude`, `Finish`, ...), replying to
the two that need an answer (`Decide` with `Decided`, `DumpStacks` with `StacksRequested`).

Every state has an answer to every event (the table is in docs/architecture.md, "The
core"). An event that merely came late (a notice after the job ended, a second stop) is a
no-op or a merge, never an error. Deadlines live in one registry (`Deadlines`), and the
shell's select waits until the earliest of them.

Stops and drains:
- The first stop request (a signal, `stalwart stop`) drains: advice `drain`, the stop
  signal once, SIGKILL after `stop.grace_s`.
- A stop from another source during a drain merges into it: the grace or deadline stays.
  The same source again (a second Ctrl-C, a second `stalwart stop`) kills at once.
- A binding preemption notice drains before its deadline; during a stop it upgrades the
  stop to a preemption (exit 75), keeping the stop signal already sent and the earlier of
  the two kill times.
- Whatever an attempt's end during a drain is classified as, it is never relaunched.

The internal-error policy: when the shell catches a bug of its own it sends
`InternalError`; the trainer gets the drain it would have had (advice, stop signal, grace),
never an early SIGKILL, the attempt is concluded, and the exit code is 70 (EX_SOFTWARE; 75
if a preemption is under way), so systemd restarts the supervisor and the job resumes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from stalwart.policy.bookkeeping import (
    ATTEMPT_DEADLINES,
    AttemptBook,
    CoreSettings,
    DrainCause,
    Notice,
    Pending,
)
from stalwart.policy.deadlines import Deadlines, Due
from stalwart.policy.events import (
    Abandon,
    ActionT,
    Advise,
    Conclude,
    Decide,
    Decided,
    DivergenceDetected,
    DumpStacks,
    Event,
    Finish,
    HangDetected,
    InjectFault,
    InternalError,
    Kill,
    Launched,
    LaunchFailed,
    PeerDrained,
    PreemptionNoticed,
    PrepareResume,
    ResumeReady,
    SendStop,
    Spawn,
    StacksRequested,
    Start,
    StopRequested,
    SystemdStopping,
    Tick,
    TrainerExited,
)
from stalwart.policy.restart import Action, Decision, State, StateMachine
from stalwart.types import Classification, ExitCode, ExitKind

logger = logging.getLogger("stalwart.supervisor")


@dataclass
class Lifecycle:
    """The supervisor core. `handle(event)` returns the actions to carry out, in order."""

    settings: CoreSettings = field(default_factory=CoreSettings)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.machine = StateMachine(self.settings.name)
        self.deadlines: Deadlines[Due] = Deadlines()
        self.attempt: AttemptBook | None = None
        self.preparing = False
        """A launch is under way: the resume is being prepared, no process yet."""
        self.pending: Pending | None = None
        self.stop_sources: list[str] = []
        self.drain: DrainCause | None = None
        self.notice: Notice | None = None
        self.internal_error: str | None = None
        self.exit_code: ExitCode | None = None
        self.chaos_kills = 0
        self._out: list[ActionT] = []

    # --- queries ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def terminal(self) -> bool:
        return self.machine.terminal

    @property
    def stop_requested(self) -> bool:
        """A stop (not a preemption) was asked for: an exit now is the stop's."""
        return bool(self.stop_sources) and self.notice is None

    @property
    def draining(self) -> bool:
        """A stop, a notice or an internal error is under way: no attempt is relaunched."""
        return self.drain is not None or bool(self.stop_sources) or self.notice is not None

    def next_deadline_s(self) -> float | None:
        return self.deadlines.next_s()

    # --- the one entry point -------------------------------------------------------------

    def handle(self, event: Event) -> list[ActionT]:
        self._out = []
        if not self.terminal:
            self._dispatch(event)
        out, self._out = self._out, []
        return out

    def _dispatch(self, event: Event) -> None:
        match event:
            case Start(now_s=now_s):
                if self.attempt is None and not self.preparing and self.pending is None:
                    self.deadlines.clear(Due.RELAUNCH)
                    self._launch(now_s)
            case ResumeReady():
                if self.preparing and self.drain is None:
                    self._emit(Spawn())
            case Launched():
                self._on_launched(event)
            case LaunchFailed(number=number, reason=reason, now_s=now_s):
                if self.preparing:
                    self.preparing = False
                    verdict = Classification(ExitKind.USER_ERROR, False, reason)
                    self._ended(number, "did not start", verdict, 0.0, now_s, spend=True)
            case StopRequested():
                self._on_stop(event)
            case PreemptionNoticed():
                self._on_notice(event)
            case HangDetected():
                attempt = self.attempt
                if attempt is not None and not attempt.hang_killed and self.drain is None:
                    attempt.hang_killed = True
                    self._emit(DumpStacks(attempt.number))
            case DivergenceDetected(now_s=now_s):
                if self.attempt is not None and self.drain is None:
                    self._kill(now_s)  # not the stop signal: the trainer would save its state
            case StacksRequested(wait_s=wait_s, now_s=now_s):
                attempt = self.attempt
                if attempt is not None and attempt.hang_killed and not attempt.killed:
                    self._kill_at(now_s + max(wait_s, 0.0))
            case PeerDrained(now_s=now_s):
                if self.attempt is not None and self.deadlines.get(Due.PEER_EXIT) is None:
                    self.deadlines.set(Due.PEER_EXIT, now_s + self.settings.peer_exit_s)
            case TrainerExited():
                attempt = self.attempt
                if attempt is not None and attempt.number == event.number:
                    self._forget_attempt()
                    self._ended(
                        event.number,
                        event.status,
                        self._chaos_verdict(attempt, event.verdict, event.status),
                        event.uptime_s,
                        event.now_s,
                        spend=not attempt.chaos_killed,
                    )
            case Decided():
                self._on_decided(event)
            case InternalError():
                self._on_internal_error(event)
            case Tick(now_s=now_s):
                for what in self.deadlines.pop_due(now_s):
                    self._on_due(what, now_s)
                    if self.terminal:
                        return

    # --- launching -----------------------------------------------------------------------

    def _launch(self, now_s: float) -> None:
        self.preparing = True
        self.machine.to(State.STARTING, "launching")
        self._emit(PrepareResume())

    def _on_launched(self, event: Launched) -> None:
        if not self.preparing:
            return
        self.preparing = False
        self.attempt = AttemptBook(event.number, event.pid, event.now_s)
        self.deadlines.set(Due.RUNNING, event.now_s + self.settings.started_after_s)
        s = self.settings
        if s.chaos_enabled and self.chaos_kills < s.chaos_max_kills:
            self.deadlines.set(
                Due.CHAOS, event.now_s + self.rng.uniform(s.chaos_min_s, s.chaos_max_s)
            )

    # --- stops, notices, internal errors -------------------------------------------------

    def _on_stop(self, event: StopRequested) -> None:
        name, source = self.settings.name, event.source
        repeated = source in self.stop_sources
        if not repeated:
            self.stop_sources.append(source)
        if self.attempt is None:
            if self.pending is not None:
                return  # the end being decided is overruled in `_on_decided`
            self._emit(Advise())
            where = "before the trainer started" if self.preparing else "during backoff"
            self._finish(ExitCode.OK, f"{name}: stopped on {source} {where}")
            return
        attempt = self.attempt
        if self.drain is None:
            self.drain = DrainCause.STOP
            logger.info(
                "%s: %s: asking the trainer to stop (grace %g s); repeat to kill it now",
                name,
                source,
                self.settings.grace_s,
            )
            self._emit(Advise())
            self._send_stop(event.now_s, self.settings.grace_s)
            self._stopping(f"stopping: {source}", self.settings.grace_s + self.settings.kill_wait_s)
        elif repeated and not attempt.killed:
            logger.warning("%s: %s again: killing the trainer now", name, source)
            self._kill(event.now_s)
        elif not attempt.killed:
            kill_at = self.deadlines.get(Due.KILL) or self.deadlines.get(Due.ESCALATE)
            left = f"; {kill_at - event.now_s:.1f} s left" if kill_at is not None else ""
            logger.info(
                "%s: %s while already draining (%s): the drain goes on%s; repeat to kill now",
                name,
                source,
                self.drain.value,
                left,
            )

    def _on_notice(self, event: PreemptionNoticed) -> None:
        if self.notice is not None:
            return
        self.notice = Notice(event.label, event.detail, event.deadline_unix)
        self._emit(Advise(checkpoint=True, deadline_unix=event.deadline_unix))
        if self.attempt is None:
            if self.pending is None:
                self._finish_preempted(None)
            return
        attempt = self.attempt
        margin_s = self.settings.drain_margin_s
        now_s = event.now_s
        if event.deadline_unix is not None:
            escalate_s = now_s + max(event.deadline_unix - event.now_unix - margin_s, 0.0)
        else:
            escalate_s = now_s + self.settings.grace_s
        previous = self.drain
        self.drain = DrainCause.PREEMPTION
        if attempt.killed:
            return
        if previous is not None and attempt.stop_sent:
            # A stop is already draining: keep its signal, take the earlier kill.
            kill_at = escalate_s + margin_s / 2
            current = self.deadlines.get(Due.KILL)
            self._kill_at(min(kill_at, current) if current is not None else kill_at)
        elif previous is None and event.trainer_drains_itself:
            self.deadlines.set(Due.ESCALATE, escalate_s)
            attempt.escalate_grace_s = margin_s / 2
        elif not attempt.stop_sent:
            self._send_stop(now_s, max(escalate_s - now_s, 0.0))
        self._stopping(f"preempted: {event.detail}", max(escalate_s - now_s, 0.0) + margin_s)

    def _on_internal_error(self, event: InternalError) -> None:
        if self.internal_error is None:
            self.internal_error = event.detail
        if self.attempt is None:
            if self.pending is None:
                self._emit(Advise())
                self._finish(self._error_code(), self._error_message(None))
            return
        if self.drain is None:
            self.drain = DrainCause.INTERNAL
            self._emit(Advise())
            self._send_stop(event.now_s, self.settings.grace_s)
            self._stopping("internal error", self.settings.grace_s + self.settings.kill_wait_s)

    def _send_stop(self, now_s: float, grace_s: float) -> None:
        attempt = self.attempt
        assert attempt is not None
        if not attempt.stop_sent:
            attempt.stop_sent = True
            self._emit(SendStop(attempt.number))
        self.deadlines.clear(Due.ESCALATE, Due.RUNNING)
        self._kill_at(now_s + grace_s)

    def _kill_at(self, at_s: float) -> None:
        self.deadlines.set(Due.KILL, at_s)

    def _kill(self, now_s: float) -> None:
        attempt = self.attempt
        assert attempt is not None
        if attempt.killed:
            return
        attempt.killed = True
        self.deadlines.clear(Due.KILL, Due.ESCALATE)
        self.deadlines.set(Due.ABANDON, now_s + self.settings.kill_wait_s)
        self._emit(Kill(attempt.number))

    def _stopping(self, text: str, extend_s: float) -> None:
        self.deadlines.clear(Due.RUNNING)
        if self.state is not State.STOPPING:
            self.machine.to(State.STOPPING, text)
        self._emit(SystemdStopping(text, extend_s + 5.0))

    # --- deadlines -----------------------------------------------------------------------

    def _on_due(self, what: Due, now_s: float) -> None:
        attempt = self.attempt
        if what is Due.RELAUNCH:
            if self.state is State.BACKOFF and attempt is None and not self.preparing:
                self._launch(now_s)
            return
        if attempt is None:
            return
        if what is Due.RUNNING:
            if self.state is State.STARTING:
                self.machine.to(State.RUNNING, f"alive for {self.settings.started_after_s:g} s")
        elif what is Due.CHAOS:
            if self.drain is None and not attempt.killed:
                self.chaos_kills += 1
                attempt.chaos_killed = True
                self._emit(InjectFault(attempt.number))
        elif what is Due.PEER_EXIT:
            if not attempt.stop_sent and not attempt.killed:
                logger.info(
                    "%s: the workers left after another node drained the job, but the launcher "
                    "is still waiting for that node (torchrun's exit barrier); killing it",
                    self.settings.name,
                )
                # No grace: deaf to SIGTERM there, its store must go (issue 21); a drain's stays.
                self._send_stop(now_s, self.settings.grace_s if self.drain is not None else 0.0)
        elif what is Due.ESCALATE:
            if not attempt.stop_sent and not attempt.killed:
                logger.warning(
                    "%s: trainer has not drained by the escalation point; sending the stop signal",
                    self.settings.name,
                )
                self._send_stop(now_s, attempt.escalate_grace_s or 0.0)
        elif what is Due.KILL:
            if attempt.stop_sent:
                logger.warning(
                    "%s: trainer pid %d still running after its grace; sending SIGKILL",
                    self.settings.name,
                    attempt.pid,
                )
            self._kill(now_s)
        elif what is Due.ABANDON:
            logger.error(
                "%s: trainer pid %d survived SIGKILL for %g s (uninterruptible I/O?); "
                "giving up on it",
                self.settings.name,
                attempt.pid,
                self.settings.kill_wait_s,
            )
            self._emit(Abandon(attempt.number))
            self._forget_attempt()
            kind = ExitKind.HANG if attempt.hang_killed else ExitKind.UNKNOWN
            if self.notice is not None:
                kind = ExitKind.PREEMPTED
            elif self.drain is not None or self.stop_sources:
                kind = ExitKind.STOPPED
            verdict = Classification(
                kind, True, f"pid {attempt.pid} could not be reaped after SIGKILL"
            )
            self._ended(
                attempt.number,
                "not reaped",
                verdict,
                now_s - attempt.started_s,
                now_s,
                spend=not attempt.chaos_killed,
            )

    # --- the end of an attempt -----------------------------------------------------------

    def _forget_attempt(self) -> None:
        self.attempt = None
        self.deadlines.clear(*ATTEMPT_DEADLINES)

    def _chaos_verdict(
        self, attempt: AttemptBook, verdict: Classification, status: str
    ) -> Classification:
        if attempt.chaos_killed and verdict.kind.is_failure:
            return Classification(
                verdict.kind, True, f"{self.settings.chaos_reason} ({status}); spends no budget"
            )
        return verdict

    def _ended(
        self,
        number: int,
        status: str,
        verdict: Classification,
        uptime_s: float,
        now_s: float,
        *,
        spend: bool,
    ) -> None:
        self.pending = Pending(number, status, verdict, uptime_s)
        if self.draining:
            self._on_decided(Decided(number, Decision(Action.FINISH, 0.0, verdict.reason), now_s))
            return
        self._emit(Decide(number, verdict, uptime_s, spend))

    def _on_decided(self, event: Decided) -> None:
        pending = self.pending
        if pending is None or pending.number != event.number:
            return
        self.pending = None
        decision = event.decision
        if self.draining and decision.action is not Action.FINISH:
            why = self.drain.value if self.drain is not None else "stop"
            decision = Decision(Action.FINISH, 0.0, f"{why} under way: not relaunched")
        self._emit(
            Conclude(pending.number, pending.status, pending.verdict, decision, pending.uptime_s)
        )
        name, number, kind = self.settings.name, pending.number, pending.verdict.kind
        if decision.action is Action.RESTART:
            self.deadlines.set(Due.RELAUNCH, event.now_s + decision.delay_s)
            self.machine.to(State.BACKOFF, f"restart in {decision.delay_s:.2f} s")
        elif decision.action is Action.GIVE_UP:
            self._finish(
                ExitCode.GAVE_UP,
                f"{name}: gave up after attempt {number}: {decision.reason}. "
                f"See `stalwart history {name}`; fix the cause, then run again.",
                gave_up=True,
            )
        elif kind is ExitKind.COMPLETED:
            self._finish(
                ExitCode.OK,
                f"{name}: training finished after {number + 1} attempt(s)",
                completed=True,
            )
        elif self.internal_error is not None and self.notice is None:
            self._finish(self._error_code(), self._error_message(number))
        elif self.notice is not None:
            self._finish_preempted(number)
        else:
            self._finish(ExitCode.OK, f"{name}: stopped on request; `stalwart run` again resumes")

    def _error_code(self) -> ExitCode:
        return ExitCode.PREEMPTED if self.notice is not None else ExitCode.SOFTWARE

    def _error_message(self, number: int | None) -> str:
        after = f" after attempt {number} drained" if number is not None else ""
        return (
            f"{self.settings.name}: internal error ({self.internal_error}); stopped{after}; "
            "exit 70: a restart of the supervisor resumes from the newest intact checkpoint"
        )

    def _finish_preempted(self, number: int | None) -> None:
        assert self.notice is not None
        self._finish(
            ExitCode.PREEMPTED,
            f"{self.settings.name}: machine preempted ({self.notice.detail})",
            preempted_after=number,
        )

    def _finish(
        self,
        code: ExitCode,
        message: str,
        *,
        completed: bool = False,
        gave_up: bool = False,
        preempted_after: int | None = None,
    ) -> None:
        self.exit_code = code
        self.deadlines.clear(Due.RELAUNCH)
        self.preparing = False
        self._emit(Finish(code, message, completed, gave_up, preempted_after))
        if gave_up:
            self.machine.to(State.FATAL, message)
        else:
            self.machine.to(State.EXITED, message)

    def _emit(self, action: ActionT) -> None:
        self._out.append(action)
