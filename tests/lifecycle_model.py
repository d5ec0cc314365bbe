"""A stateful model of the supervisor core's world, for hypothesis' RuleBasedStateMachine.

The machine plays the shell: it feeds the core random sequences of every event (stops
from several sources, notices with and without deadlines, hangs, exits of every kind,
internal errors, time passing) and answers its actions the way the shell does, then checks
the invariants after every step. Used by tests/test_lifecycle.py (bounded, in `make test`)
and bench/stateful_core.py (a longer run).
"""

from __future__ import annotations

import random

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from stalwart.policy import events as ev
from stalwart.policy.bookkeeping import CoreSettings
from stalwart.policy.lifecycle import Lifecycle
from stalwart.policy.restart import Action, Decision, State
from stalwart.types import Classification, ExitCode, ExitKind

UNIX_OFFSET = 1_700_000_000.0
"""Wall time = monotonic time + this (one time base, so deadlines compare)."""
SETTINGS = CoreSettings(
    name="model",
    grace_s=30.0,
    kill_wait_s=5.0,
    started_after_s=5.0,
    drain_margin_s=10.0,
    peer_exit_s=10.0,
    chaos_enabled=True,
    chaos_min_s=20.0,
    chaos_max_s=200.0,
    chaos_max_kills=3,
)
DOCUMENTED_EXIT_CODES = {ExitCode.OK, ExitCode.GAVE_UP, ExitCode.SOFTWARE, ExitCode.PREEMPTED}
SOURCES = ("SIGINT", "SIGTERM", "SIGHUP", "`stalwart stop`")
EPS = 1e-9


class LifecycleModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Lifecycle(SETTINGS, random.Random(0))
        self.now_s = 0.0
        self.started = False
        self.awaiting_resume = False
        self.next_number = 0
        self.alive: int | None = None
        """Number of the attempt whose process runs (and can still exit)."""
        self.fail_next_spawn = False
        self.next_decision = Decision(Action.RESTART, 1.0, "model")
        self.stacks_wait_s = 3.0
        # what the trainer of each attempt received
        self.stops_sent: dict[int, list[float]] = {}
        self.killed_at: dict[int, float] = {}
        self.earliest_kill_s: dict[int, float] = {}
        """Per attempt: the earliest moment a SIGKILL is allowed without an escalation."""
        self.escalated: set[int] = set()
        """Attempts whose kill was asked for: a repeated stop from one source, a hang."""
        self.sources: list[str] = []
        self.notice_deadline_s: float | None = None
        self.notice_accepted = False
        self.launched: list[int] = []
        self.concluded: list[int] = []
        self.finished: list[ev.Finish] = []
        self.completed = False

    # --- the shell ------------------------------------------------------------------------

    def feed(self, event: ev.Event) -> None:
        was_terminal = self.core.terminal
        queue: list[ev.Event] = [event]
        while queue:
            actions = self.core.handle(queue.pop(0))
            if was_terminal:
                assert actions == [], f"actions after the end: {actions}"
            for action in actions:
                reply = self.carry_out(action)
                if reply is not None:
                    queue.append(reply)

    def carry_out(self, action: ev.ActionT) -> ev.Event | None:
        match action:
            case ev.PrepareResume():
                assert not self.awaiting_resume
                self.awaiting_resume = True
            case ev.Spawn():
                assert self.alive is None, "a second trainer while one runs"
                number = self.next_number
                self.next_number += 1
                if self.fail_next_spawn:
                    self.fail_next_spawn = False
                    return ev.LaunchFailed(number, "no such program", self.now_s)
                self.alive = number
                self.launched.append(number)
                return ev.Launched(number, 1000 + number, self.now_s)
            case ev.SendStop(number=number):
                assert number == self.alive, "stop signal to a trainer that is not running"
                sent = self.stops_sent.setdefault(number, [])
                assert not sent, f"attempt {number} got a second stop signal"
                sent.append(self.now_s)
                # Without a drain of its own (a launcher left behind by a peer's drain, its
                # workers gone) the kill may follow at once; any drain keeps its grace.
                own_drain = self.core.drain is not None
                self._allow_kill(number, self.now_s + (SETTINGS.grace_s if own_drain else 0.0))
            case ev.Kill(number=number):
                assert number == self.alive
                assert number not in self.killed_at, "killed twice"
                self.killed_at[number] = self.now_s
                if number not in self.escalated and number in self.earliest_kill_s:
                    assert self.now_s + EPS >= self.earliest_kill_s[number], (
                        f"SIGKILL at {self.now_s} before the grace or deadline "
                        f"({self.earliest_kill_s[number]})"
                    )
            case ev.DumpStacks(number=number):
                self.escalated.add(number)
                return ev.StacksRequested(self.stacks_wait_s, self.now_s)
            case ev.Abandon(number=number):
                assert number == self.alive
                self.alive = None
            case ev.Decide(number=number):
                return ev.Decided(number, self.next_decision, self.now_s)
            case ev.Conclude(number=number, verdict=verdict):
                assert number not in self.concluded, f"attempt {number} concluded twice"
                self.concluded.append(number)
                if verdict.kind is ExitKind.COMPLETED:
                    self.completed = True
            case ev.Finish():
                assert not self.finished, "finished twice"
                self.finished.append(action)
            case ev.InjectFault(number=number):
                assert number == self.alive
                self.escalated.add(number)
            case ev.Advise() | ev.SystemdStopping():
                pass
        return None

    def _allow_kill(self, number: int, at_s: float) -> None:
        current = self.earliest_kill_s.get(number)
        self.earliest_kill_s[number] = at_s if current is None else min(current, at_s)

    # --- the world ------------------------------------------------------------------------

    @initialize(running=st.booleans())
    def start(self, running: bool) -> None:
        """Most runs start with a trainer running; some with the resume still being prepared."""
        self.started = True
        self.feed(ev.Start(self.now_s))
        if running:
            self.awaiting_resume = False
            self.feed(ev.ResumeReady(self.now_s))

    @precondition(lambda self: self.awaiting_resume)
    @rule(fail=st.sampled_from([False, False, False, True]))
    def resume_ready(self, fail: bool) -> None:
        self.awaiting_resume = False
        self.fail_next_spawn = fail
        self.feed(ev.ResumeReady(self.now_s))

    @precondition(lambda self: not self.core.terminal)
    @rule(source=st.sampled_from(SOURCES))
    def stop(self, source: str) -> None:
        if source in self.sources and self.alive is not None:
            self.escalated.add(self.alive)
        if source not in self.sources:
            self.sources.append(source)
        self.feed(ev.StopRequested(source, self.now_s))

    @precondition(lambda self: not self.core.terminal)
    @rule(
        deadline_in_s=st.none() | st.floats(min_value=-5.0, max_value=120.0),
        drains_itself=st.booleans(),
    )
    def notice(self, deadline_in_s: float | None, drains_itself: bool) -> None:
        deadline_unix = None if deadline_in_s is None else self.now_s + deadline_in_s + UNIX_OFFSET
        if not self.core.terminal and not self.notice_accepted:
            self.notice_accepted = True
            if self.alive is not None:
                if deadline_in_s is None:
                    escalate_s = self.now_s + SETTINGS.grace_s
                else:
                    escalate_s = self.now_s + max(deadline_in_s - SETTINGS.drain_margin_s, 0.0)
                self._allow_kill(self.alive, escalate_s)
        self.feed(
            ev.PreemptionNoticed(
                "gcp",
                "preempted",
                deadline_unix,
                self.now_s,
                self.now_s + UNIX_OFFSET,
                drains_itself,
            )
        )

    @precondition(lambda self: not self.core.terminal)
    @rule()
    def hang(self) -> None:
        self.feed(ev.HangDetected(self.now_s))

    @precondition(lambda self: not self.core.terminal)
    @rule()
    def divergence(self) -> None:
        """The loss went NaN or spiked: the trainer is killed at once, without its save
        (also during the grace of a stop signal: that save would keep the diverged state);
        during a drain it is ignored (the drain's save is the one that matters)."""
        draining = self.core.drain is not None
        if self.alive is not None and not draining:
            self.escalated.add(self.alive)
        killed = dict(self.killed_at)
        self.feed(ev.DivergenceDetected(self.now_s))
        if draining:
            assert self.killed_at == killed, "a divergence killed the trainer during a drain"

    @rule(wait_s=st.sampled_from([0.0, 3.0]))
    def stacks_take(self, wait_s: float) -> None:
        self.stacks_wait_s = wait_s

    @precondition(lambda self: not self.core.terminal)
    @rule()
    def peer_drained(self) -> None:
        self.feed(ev.PeerDrained(self.now_s))

    @precondition(lambda self: self.alive is not None)
    @rule(kind=st.sampled_from(list(ExitKind)), retryable=st.booleans())
    def trainer_exits(self, kind: ExitKind, retryable: bool) -> None:
        number = self.alive
        assert number is not None
        self.alive = None
        verdict = Classification(kind, retryable, "model")
        self.feed(ev.TrainerExited(number, "exit", verdict, 1.0, self.now_s))

    @rule(
        action=st.sampled_from([Action.RESTART, Action.FINISH, Action.GIVE_UP]),
        delay_s=st.floats(min_value=0.0, max_value=50.0),
    )
    def choose_decision(self, action: Action, delay_s: float) -> None:
        self.next_decision = Decision(action, delay_s, "model")

    @precondition(lambda self: not self.core.terminal)
    @rule()
    def internal_error(self) -> None:
        self.feed(ev.InternalError("a bug", self.now_s))

    @precondition(lambda self: not self.core.terminal)
    @rule(dt=st.floats(min_value=0.0, max_value=100.0))
    def time_passes(self, dt: float) -> None:
        self.now_s += dt
        self.feed(ev.Tick(self.now_s))

    @precondition(lambda self: not self.core.terminal)
    @rule()
    def tick_at_next_deadline(self) -> None:
        nxt = self.core.next_deadline_s()
        if nxt is not None:
            self.now_s = max(self.now_s, nxt)
        self.feed(ev.Tick(self.now_s))

    @rule(late=st.sampled_from(["stop", "notice", "hang", "divergence", "error", "tick"]))
    def late_event(self, late: str) -> None:
        """Any event at any time, after the end too (where it must be a no-op)."""
        if late == "stop":
            self.stop("SIGINT")
        elif late == "notice":
            self.notice(30.0, True)
        elif late == "hang":
            self.feed(ev.HangDetected(self.now_s))
        elif late == "divergence":
            self.feed(ev.DivergenceDetected(self.now_s))
        elif late == "error":
            self.feed(ev.InternalError("late bug", self.now_s))
        else:
            self.feed(ev.Tick(self.now_s))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def exit_codes_are_documented(self) -> None:
        for finish in self.finished:
            assert finish.code in DOCUMENTED_EXIT_CODES

    @invariant()
    def a_preemption_not_followed_by_completion_ends_in_75(self) -> None:
        if self.finished and self.notice_accepted and not self.completed:
            assert self.finished[0].code is ExitCode.PREEMPTED, self.finished[0]

    @invariant()
    def a_completed_job_ends_in_0(self) -> None:
        if self.finished and self.finished[0].completed:
            assert self.finished[0].code is ExitCode.OK

    @invariant()
    def every_attempt_is_concluded_once_and_only_when_it_ended(self) -> None:
        assert len(set(self.concluded)) == len(self.concluded)
        if self.core.terminal:
            assert self.alive is None or self.alive in self.launched
            ended = [n for n in self.launched if n != self.alive]
            assert sorted(ended) == sorted(n for n in self.concluded if n in self.launched)

    @invariant()
    def terminal_means_finished(self) -> None:
        assert self.core.terminal == bool(self.finished)
        if self.core.terminal:
            assert self.core.state in (State.EXITED, State.FATAL)
            assert self.alive is None, "the supervisor ended with its trainer still running"
