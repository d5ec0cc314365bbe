"""Messages and the rate limit: pure functions of records and time."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from stalwart.notify.config import NotifyEvent
from stalwart.notify.message import (
    RateLimiter,
    attempt_message,
    event_of_attempt,
    event_of_job,
    job_message,
)
from stalwart.observation import AttemptEnded, JobEnded, JobInfo
from stalwart.types import ExitCode, ExitKind
from tests.notify.collector import fields

JOB = JobInfo("train", "node7", "run1", Path("/state/train"), Path("/ck"), 10)


def ended(**changes: object) -> AttemptEnded:
    values: dict[str, object] = {
        "number": 4,
        "kind": ExitKind.USER_ERROR,
        "retryable": True,
        "reason": "Traceback: RuntimeError",
        "status": "exit code 1",
        "uptime_s": 12.5,
        "tail": ("step 10", "Traceback (most recent call last):", "RuntimeError: boom"),
        "resumed_from": "/ck/step-000000010",
        "action": "restart",
        "decision": "failure 2 of 11",
        "delay_s": 2.0,
        "hang_killed": False,
        "rolled_back": None,
        "restart_budget_left": 8,
        "work_lost_s": 3.0,
        "newest_checkpoint": "/ck/step-000000020",
        "now_unix": 1000.0,
    }
    values.update(changes)
    return AttemptEnded(**values)  # type: ignore[arg-type]


def test_one_event_per_end_the_most_specific() -> None:
    assert event_of_attempt(ended()) is NotifyEvent.FAILURE
    assert event_of_attempt(ended(kind=ExitKind.HANG, hang_killed=True)) is NotifyEvent.HANG_KILLED
    assert event_of_attempt(ended(rolled_back="step-000000010")) is NotifyEvent.ROLLBACK
    assert event_of_attempt(ended(kind=ExitKind.PREEMPTED)) is None
    assert event_of_attempt(ended(kind=ExitKind.COMPLETED)) is None
    end = JobEnded(ExitCode.OK, "done", None, 0.0)
    assert event_of_job(end, completed=True) is NotifyEvent.COMPLETED
    assert event_of_job(end, completed=False) is None  # stopped on request: no page
    assert event_of_job(JobEnded(ExitCode.GAVE_UP, "", None, 0), False) is NotifyEvent.GAVE_UP
    assert event_of_job(JobEnded(ExitCode.PREEMPTED, "", None, 0), False) is NotifyEvent.PREEMPTED
    soft = JobEnded(ExitCode.SOFTWARE, "", None, 0)
    assert event_of_job(soft, False) is NotifyEvent.SUPERVISOR_ERROR


def test_a_failure_says_who_where_what_why_what_next_and_where_to_look() -> None:
    message = attempt_message(
        JOB, NotifyEvent.FAILURE, ended(), "/ck/step-000000020", tail_lines=2, suppressed=5
    )
    found = fields({"message": message.body})
    assert found["job"].startswith("train") and found["host"] == "node7"
    assert "attempt 4 failed" in found["what happened"]
    assert found["cause"].startswith("USER_ERROR (Traceback: RuntimeError)")
    assert "RuntimeError: boom" in message.body and "step 10" not in message.body  # 2 lines
    assert "step-000000020" in found["next"] and "budget left: 8" in found["next"]
    assert found["look further"] == "stalwart history train --state-dir /state/train"
    assert "5 earlier 'failure' notifications were suppressed" in message.body
    assert message.severity == "warning" and "node7" in message.title


def test_gave_up_carries_the_last_failure_and_why_it_stopped() -> None:
    end = JobEnded(ExitCode.GAVE_UP, "restart budget spent", "/ck/step-000000020", 0.0)
    message = job_message(JOB, NotifyEvent.GAVE_UP, end, ended(), tail_lines=10)
    found = fields({"message": message.body})
    assert found["stopped"] == "restart budget spent"
    assert "RuntimeError: boom" in message.body
    assert found["newest intact checkpoint"] == "step-000000020"
    assert message.severity == "failure"


@given(st.lists(st.floats(min_value=0, max_value=10_000), max_size=60))
def test_the_rate_limit_never_lets_more_than_the_limit_through_any_window(
    times: list[float],
) -> None:
    limiter = RateLimiter(3, 100.0)
    sent = [t for t in sorted(times) if limiter.admit(NotifyEvent.FAILURE, t) is not None]
    for t in sent:
        assert len([s for s in sent if t <= s < t + 100.0]) <= 3


def test_suppressed_ones_are_counted_into_the_next_sent() -> None:
    limiter = RateLimiter(2, 60.0)
    results = [limiter.admit(NotifyEvent.FAILURE, t) for t in (0, 1, 2, 3, 4)]
    assert results == [0, 0, None, None, None]
    assert limiter.admit(NotifyEvent.GAVE_UP, 5) == 0  # each event has its own budget
    assert limiter.admit(NotifyEvent.FAILURE, 61) == 3
