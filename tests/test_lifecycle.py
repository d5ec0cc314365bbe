"""The supervisor core under every event order (hypothesis stateful), plus the named cases.

The invariants are in tests/lifecycle_model.py: no exception (an illegal transition
raises), at most one stop signal per trainer and SIGKILL only after its grace or deadline
unless the same source asked again (or a hang or injected fault), every attempt concluded
exactly once, documented exit codes only, 75 after a preemption that did not complete, 0
after a completion. bench/stateful_core.py runs the same machine much longer.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings

from stalwart.policy import events as ev
from stalwart.policy.bookkeeping import CoreSettings
from stalwart.policy.deadlines import Due
from stalwart.policy.lifecycle import Lifecycle
from stalwart.policy.restart import Action, Decision, State
from stalwart.types import Classification, ExitCode, ExitKind
from tests.lifecycle_model import UNIX_OFFSET, LifecycleModel

TestLifecycleModel = LifecycleModel.TestCase
TestLifecycleModel.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

S = CoreSettings(name="job", grace_s=30.0, kill_wait_s=5.0, drain_margin_s=10.0)


def running(now_s: float = 0.0) -> tuple[Lifecycle, list[ev.ActionT]]:
    core = Lifecycle(S, random.Random(0))
    out = core.handle(ev.Start(now_s))
    assert out == [ev.PrepareResume()]
    assert core.handle(ev.ResumeReady(now_s)) == [ev.Spawn()]
    assert core.handle(ev.Launched(7, 4242, now_s)) == []
    return core, out


def kinds(actions: list[ev.ActionT]) -> list[type]:
    return [type(a) for a in actions]


def notice(now_s: float, deadline_in_s: float | None, drains_itself: bool = True) -> ev.Event:
    deadline = None if deadline_in_s is None else now_s + deadline_in_s + UNIX_OFFSET
    return ev.PreemptionNoticed(
        "gcp", "preempted", deadline, now_s, now_s + UNIX_OFFSET, drains_itself
    )


def test_a_stop_during_a_preemption_drain_merges_into_it() -> None:
    core, _ = running()
    out = core.handle(notice(1.0, 30.0))
    assert kinds(out) == [ev.Advise, ev.SystemdStopping]
    assert core.state is State.STOPPING
    assert core.deadlines.get(Due.ESCALATE) == 1.0 + 20.0
    # Ctrl-C while draining: no transition, no signal, the deadline stays.
    assert core.handle(ev.StopRequested("SIGINT", 2.0)) == []
    assert core.deadlines.get(Due.ESCALATE) == 21.0
    # `stalwart stop` too.
    assert core.handle(ev.StopRequested("`stalwart stop`", 3.0)) == []
    # The trainer saves and exits: preempted, exit 75, concluded once.
    done = core.handle(
        ev.TrainerExited(7, "exit code 0", Classification(ExitKind.STOPPED, False, "ok"), 4, 4)
    )
    assert kinds(done) == [ev.Conclude, ev.Finish]
    assert done[-1] == ev.Finish(
        ExitCode.PREEMPTED, "job: machine preempted (preempted)", preempted_after=7
    )
    assert core.exit_code is ExitCode.PREEMPTED


def test_the_same_source_twice_escalates_to_sigkill() -> None:
    core, _ = running()
    core.handle(notice(1.0, 60.0))
    core.handle(ev.StopRequested("SIGINT", 2.0))
    assert core.handle(ev.StopRequested("SIGINT", 2.5)) == [ev.Kill(7)]


def test_a_notice_during_a_stop_upgrades_it_to_a_preemption() -> None:
    core, _ = running()
    out = core.handle(ev.StopRequested("SIGTERM", 0.0))
    assert kinds(out) == [ev.Advise, ev.SendStop, ev.SystemdStopping]
    assert core.deadlines.get(Due.KILL) == 30.0
    out = core.handle(notice(1.0, 15.0))
    assert ev.SendStop not in kinds(out)  # the stop signal was sent once
    assert core.deadlines.get(Due.KILL) == 1.0 + 5.0 + 5.0  # escalation + margin / 2
    core.handle(ev.Tick(11.0))
    done = core.handle(
        ev.TrainerExited(7, "SIGKILL", Classification(ExitKind.UNKNOWN, True, "killed"), 11, 11)
    )
    assert done[-1].code is ExitCode.PREEMPTED  # type: ignore[union-attr]


def test_a_trainer_that_cannot_be_reaped_during_a_drain_ends_the_job_not_a_relaunch() -> None:
    core, _ = running()
    core.handle(notice(0.0, 12.0, drains_itself=False))
    assert core.handle(ev.Tick(2.0)) == [ev.Kill(7)]
    out = core.handle(ev.Tick(7.0))
    assert kinds(out) == [ev.Abandon, ev.Conclude, ev.Finish]
    assert out[-1].code is ExitCode.PREEMPTED  # type: ignore[union-attr]
    assert core.state is State.EXITED


def test_an_internal_error_drains_the_trainer_and_exits_70() -> None:
    core, _ = running()
    out = core.handle(ev.InternalError("KeyError in a handler", 0.0))
    assert kinds(out) == [ev.Advise, ev.SendStop, ev.SystemdStopping]
    assert core.handle(ev.Tick(29.0)) == []  # never SIGKILL before the grace
    done = core.handle(
        ev.TrainerExited(7, "exit code 0", Classification(ExitKind.STOPPED, False, "s"), 9, 29.5)
    )
    assert done[-1].code is ExitCode.SOFTWARE  # type: ignore[union-attr]


def test_a_failure_during_a_stop_is_not_relaunched() -> None:
    core, _ = running()
    core.handle(ev.StopRequested("SIGINT", 0.0))
    out = core.handle(
        ev.TrainerExited(7, "exit code 1", Classification(ExitKind.UNKNOWN, True, "x"), 3, 3)
    )
    assert ev.Decide not in kinds(out)
    assert out[-1] == ev.Finish(
        ExitCode.OK, "job: stopped on request; `stalwart run` again resumes"
    )


def test_a_relaunch_follows_the_policy_and_its_delay() -> None:
    core, _ = running()
    out = core.handle(
        ev.TrainerExited(7, "exit code 1", Classification(ExitKind.UNKNOWN, True, "x"), 3, 3)
    )
    assert out == [ev.Decide(7, Classification(ExitKind.UNKNOWN, True, "x"), 3, True)]
    out = core.handle(ev.Decided(7, Decision(Action.RESTART, 2.0, "again"), 3.0))
    assert kinds(out) == [ev.Conclude]
    assert core.state is State.BACKOFF
    assert core.handle(ev.Tick(4.9)) == []
    assert core.handle(ev.Tick(5.0)) == [ev.PrepareResume()]
    # A stop while the resume is being prepared ends the job; no trainer is spawned.
    out = core.handle(ev.StopRequested("SIGTERM", 5.5))
    assert out[-1] == ev.Finish(ExitCode.OK, "job: stopped on SIGTERM before the trainer started")
    assert core.handle(ev.ResumeReady(6.0)) == []


def test_events_after_the_end_are_no_ops() -> None:
    core, _ = running()
    core.handle(ev.StopRequested("SIGINT", 0.0))
    core.handle(
        ev.TrainerExited(7, "exit code 0", Classification(ExitKind.STOPPED, False, "s"), 1, 1)
    )
    assert core.terminal
    for event in (
        ev.StopRequested("SIGINT", 2.0),
        notice(2.0, 10.0),
        ev.HangDetected(2.0),
        ev.Tick(100.0),
        ev.InternalError("late", 3.0),
    ):
        assert core.handle(event) == []
