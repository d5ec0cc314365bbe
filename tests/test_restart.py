"""Restart policy and state machine on a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.clock import FakeClock
from stalwart.policy.restart import (
    Action,
    IllegalTransition,
    PoisonTracker,
    PoisonVerdict,
    RestartConfig,
    RestartPolicy,
    State,
    StateMachine,
)
from stalwart.types import Classification, ExitKind

CRASH = Classification(ExitKind.UNKNOWN, True, "exit code 1")
FATAL = Classification(ExitKind.USER_ERROR, False, "SyntaxError")
PREEMPT = Classification(ExitKind.PREEMPTED, True, "preempted")
DONE = Classification(ExitKind.COMPLETED, False, "exit code 0")


def policy(**overrides: object) -> RestartPolicy:
    return RestartPolicy(RestartConfig.model_validate(overrides), random.Random(7))


def test_backoff_grows_then_caps_on_fake_clock() -> None:
    clock = FakeClock()
    p = policy(backoff_initial_s=1, backoff_max_s=10, backoff_multiplier=2, max_restarts=100)
    ceilings, delays = [], []
    for _ in range(8):
        decision = p.on_exit(clock.monotonic(), CRASH, uptime_s=1)
        assert decision.action is Action.RESTART
        ceilings.append(decision.ceiling_s)
        delays.append(decision.delay_s)
        clock.advance(decision.delay_s + 1)
    assert ceilings == [1, 2, 4, 8, 10, 10, 10, 10]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    # Full jitter: on average the delays grow with the ceiling.
    assert sum(delays[4:]) / 4 > sum(delays[:2]) / 2


def test_no_jitter_delays_equal_ceilings() -> None:
    p = policy(backoff_initial_s=0.5, backoff_multiplier=3, jitter="none", max_restarts=10)
    delays = [p.on_exit(float(i), CRASH, 0.1).delay_s for i in range(4)]
    assert delays == [0.5, 1.5, 4.5, 13.5]


def test_equal_jitter_stays_in_upper_half() -> None:
    p = policy(backoff_initial_s=4, backoff_multiplier=1, jitter="equal", max_restarts=100)
    for i in range(50):
        assert 2 <= p.on_exit(float(i), CRASH, 0.1).delay_s <= 4


def test_budget_spent_gives_up() -> None:
    p = policy(max_restarts=3, window_s=100)
    actions = [p.on_exit(float(t), CRASH, 1).action for t in range(4)]
    assert actions == [Action.RESTART] * 3 + [Action.GIVE_UP]


def test_window_slides() -> None:
    p = policy(max_restarts=2, window_s=10)
    assert p.on_exit(0, CRASH, 1).action is Action.RESTART
    assert p.on_exit(5, CRASH, 1).action is Action.RESTART
    # The failure at t=0 has left the window by t=11: still two in it, so allowed.
    assert p.on_exit(11, CRASH, 1).action is Action.RESTART
    assert p.on_exit(12, CRASH, 1).action is Action.GIVE_UP


def test_preemptions_spend_no_budget() -> None:
    p = policy(max_restarts=1)
    for t in range(20):
        assert p.on_exit(float(t), PREEMPT, 1).action is Action.RESTART
    assert p.failures_in_window == 0
    assert p.on_exit(30, CRASH, 1).action is Action.RESTART
    assert p.on_exit(31, CRASH, 1).action is Action.GIVE_UP


def test_healthy_uptime_resets_backoff() -> None:
    p = policy(
        backoff_initial_s=1,
        backoff_multiplier=2,
        jitter="none",
        healthy_uptime_s=60,
        max_restarts=100,
    )
    assert [p.on_exit(float(t), CRASH, 1).delay_s for t in range(3)] == [1, 2, 4]
    assert p.on_exit(10, CRASH, uptime_s=61).delay_s == 1


def test_non_retryable_gives_up_at_once() -> None:
    decision = policy().on_exit(0, FATAL, 1)
    assert decision.action is Action.GIVE_UP
    assert "not retryable" in decision.reason


def test_completion_finishes() -> None:
    assert policy().on_exit(0, DONE, 1).action is Action.FINISH


def test_huge_streak_does_not_overflow() -> None:
    p = policy(backoff_initial_s=1, backoff_max_s=300, backoff_multiplier=1000, max_restarts=10**6)
    for t in range(2000):
        decision = p.on_exit(float(t), CRASH, 0)
    assert decision.ceiling_s == 300


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1000), st.sampled_from([CRASH, PREEMPT, FATAL, DONE]), st.floats(0, 2000)
        ),
        max_size=60,
    ),
    st.integers(0, 20),
    st.floats(1, 10_000),
)
def test_policy_invariants(
    events: list[tuple[float, Classification, float]], budget: int, window: float
) -> None:
    p = policy(max_restarts=budget, window_s=window, backoff_initial_s=0.5, backoff_max_s=60)
    now = 0.0
    for gap, verdict, uptime in events:
        now += gap
        decision = p.on_exit(now, verdict, uptime)
        assert 0 <= decision.delay_s <= 60
        assert decision.delay_s <= decision.ceiling_s or decision.action is not Action.RESTART
        if verdict is FATAL:
            assert decision.action is Action.GIVE_UP
        if verdict is PREEMPT:
            assert decision.action is Action.RESTART
        if decision.action is Action.RESTART and verdict is CRASH:
            assert p.failures_in_window <= budget


def test_state_machine_checks_and_logs_transitions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    machine = StateMachine("job")
    machine.to(State.STARTING, "attempt 0")
    machine.to(State.RUNNING, "alive")
    machine.to(State.BACKOFF, "crash")
    with pytest.raises(IllegalTransition):
        machine.to(State.RUNNING, "skipped STARTING")
    machine.to(State.STARTING, "attempt 1")
    machine.to(State.STOPPING, "SIGTERM")
    machine.to(State.EXITED, "stopped")
    assert machine.terminal
    with pytest.raises(IllegalTransition):
        machine.to(State.STARTING, "after the end")
    assert "job: STOPPING -> EXITED (stopped)" in caplog.text
    assert len(machine.history) == 6


def test_poison_rollback_after_repeated_failures_from_the_same_checkpoint() -> None:
    poison = PoisonTracker(failures_to_poison=3, max_rollbacks=1)
    crash = ExitKind.UNKNOWN
    assert poison.on_attempt_end("step-3", False, crash) == PoisonVerdict()
    assert poison.on_attempt_end("step-3", False, crash) == PoisonVerdict()
    assert poison.on_attempt_end("step-3", False, crash) == PoisonVerdict(rollback="step-3")
    # progress (a newer checkpoint) or a preemption resets the streak
    poison.on_attempt_end("step-2", False, crash)
    poison.on_attempt_end("step-2", True, crash)
    poison.on_attempt_end("step-2", False, ExitKind.PREEMPTED)
    assert poison.on_attempt_end("step-2", False, crash) == PoisonVerdict()
    poison.on_attempt_end("step-2", False, crash)
    verdict = poison.on_attempt_end("step-2", False, crash)
    assert verdict.rollback is None and verdict.give_up is not None
    assert "step-3, step-2" in verdict.give_up


def test_unreadable_checkpoint_is_poison_at_once() -> None:
    poison = PoisonTracker(failures_to_poison=3, max_rollbacks=2)
    verdict = poison.on_attempt_end("step-9", False, ExitKind.CHECKPOINT_CORRUPT)
    assert verdict.rollback == "step-9"
    assert poison.on_attempt_end(None, False, ExitKind.CHECKPOINT_CORRUPT) == PoisonVerdict()


@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, "a", "b", "c"]),
            st.booleans(),
            st.sampled_from(list(ExitKind)),
        ),
        max_size=80,
    ),
    st.integers(1, 4),
    st.integers(0, 3),
)
def test_poison_invariants(
    events: list[tuple[str | None, bool, ExitKind]], threshold: int, max_rollbacks: int
) -> None:
    poison = PoisonTracker(threshold, max_rollbacks)
    rolled: list[str] = []
    for resumed, produced, kind in events:
        verdict = poison.on_attempt_end(resumed, produced, kind)
        if verdict.rollback is not None:
            assert verdict.rollback == resumed
            assert verdict.rollback not in rolled  # at most once per checkpoint
            rolled.append(verdict.rollback)
        if produced or kind in (ExitKind.PREEMPTED, ExitKind.STOPPED, ExitKind.COMPLETED):
            assert verdict == PoisonVerdict()
    assert len(rolled) <= max_rollbacks
    assert rolled == poison.rolled_back


def test_kills_from_outside_neither_grow_nor_reset_the_streak() -> None:
    poison = PoisonTracker(failures_to_poison=2, max_rollbacks=2)
    crash = ExitKind.UNKNOWN
    assert poison.on_attempt_end("step-5", False, crash) == PoisonVerdict()
    for _ in range(5):  # SIGKILLed from outside: no evidence about step-5
        assert poison.on_attempt_end("step-5", False, crash, evidence=False) == PoisonVerdict()
    assert poison.on_attempt_end("step-5", False, crash) == PoisonVerdict(rollback="step-5")


def test_poison_evidence_is_what_the_trainer_did_to_itself() -> None:
    import signal

    from stalwart.supervisor.checkpoints import poison_evidence
    from stalwart.types import ExitStatus

    assert poison_evidence(ExitStatus(1, None), ExitKind.UNKNOWN)
    assert poison_evidence(ExitStatus(None, signal.SIGSEGV), ExitKind.UNKNOWN)
    assert poison_evidence(None, ExitKind.HANG)
    assert poison_evidence(ExitStatus(None, signal.SIGKILL), ExitKind.CHECKPOINT_CORRUPT)
    assert not poison_evidence(ExitStatus(None, signal.SIGKILL), ExitKind.UNKNOWN)
    assert not poison_evidence(ExitStatus(137, None), ExitKind.UNKNOWN)  # a shell's SIGKILL
    assert not poison_evidence(ExitStatus(None, signal.SIGTERM), ExitKind.UNKNOWN)
