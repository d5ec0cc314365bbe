"""Exit classification as a pure function."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.policy.classify import ExitContext, classify, compile_rules
from stalwart.types import ExitKind, ExitStatus

FIRST = ExitContext(attempt=0, uptime_s=1.0)
LATER = ExitContext(attempt=3, uptime_s=100.0)
FAILED = ExitStatus(code=1, signal=None)


@pytest.mark.parametrize(
    ("line", "kind", "retryable"),
    [
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            ExitKind.OOM,
            True,
        ),
        (
            "RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:219",
            ExitKind.INFRA,
            True,
        ),
        (
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            ExitKind.INFRA,
            True,
        ),
        ('  File "train.py", line 3\nSyntaxError: invalid syntax', ExitKind.USER_ERROR, False),
        ("ModuleNotFoundError: No module named 'transformers'", ExitKind.USER_ERROR, False),
        (
            "python: can't open file '/x/train.py': [Errno 2] No such file or directory",
            ExitKind.USER_ERROR,
            False,
        ),
        (
            "RuntimeError: PytorchStreamReader failed reading zip archive: "
            "failed finding central directory",
            ExitKind.CHECKPOINT_CORRUPT,
            True,
        ),
        ("ValueError: something odd", ExitKind.UNKNOWN, True),
    ],
)
def test_output_patterns(line: str, kind: ExitKind, retryable: bool) -> None:
    verdict = classify(FAILED, ["step 10", *line.split("\n")], FIRST)
    assert verdict.kind is kind
    assert verdict.retryable is retryable


def test_user_error_only_fatal_on_first_attempt() -> None:
    tail = ["ImportError: cannot import name 'x'"]
    assert classify(FAILED, tail, FIRST).retryable is False
    later = classify(FAILED, tail, LATER)
    assert later.kind is ExitKind.USER_ERROR and later.retryable is True


def test_newest_line_wins() -> None:
    tail = ["NCCL WARN transient, recovered", "torch.OutOfMemoryError: CUDA out of memory"]
    assert classify(FAILED, tail, LATER).kind is ExitKind.OOM


def test_context_overrides_output() -> None:
    tail = ["CUDA out of memory"]
    assert classify(FAILED, tail, ExitContext(0, 5, hang_killed=True)).kind is ExitKind.HANG
    preempted = classify(FAILED, tail, ExitContext(0, 5, preemption_pending=True))
    assert preempted.kind is ExitKind.PREEMPTED and preempted.retryable
    stopped = classify(
        ExitStatus(None, signal.SIGKILL), tail, ExitContext(0, 5, stop_requested=True)
    )
    assert stopped.kind is ExitKind.STOPPED and not stopped.kind.is_failure


def test_sigkill_at_memory_limit_is_oom() -> None:
    killed = ExitStatus(None, signal.SIGKILL)
    assert classify(killed, [], ExitContext(1, 5, memory_at_limit=True)).kind is ExitKind.OOM
    assert classify(killed, [], ExitContext(1, 5)).kind is ExitKind.UNKNOWN
    shell_killed = ExitStatus(137, None)
    assert classify(shell_killed, [], ExitContext(1, 5, memory_at_limit=True)).kind is ExitKind.OOM


def test_sigbus_is_infra() -> None:
    assert classify(ExitStatus(None, signal.SIGBUS), [], LATER).kind is ExitKind.INFRA


def test_configured_rules_and_codes_come_first() -> None:
    rules = compile_rules([("DatasetNotFound", ExitKind.USER_ERROR, False)])
    verdict = classify(FAILED, ["CUDA error", "DatasetNotFound: /data"], LATER, rules=rules)
    assert verdict.kind is ExitKind.USER_ERROR and not verdict.retryable
    coded = classify(
        ExitStatus(42, None), ["CUDA error"], LATER, non_retryable_exit_codes=frozenset({42})
    )
    assert coded.kind is ExitKind.USER_ERROR and not coded.retryable


def test_drained_exit_zero_is_not_completion() -> None:
    drained = ExitStatus(0, None)
    assert (
        classify(drained, [], ExitContext(1, 5, preemption_pending=True)).kind is ExitKind.PREEMPTED
    )
    assert classify(drained, [], ExitContext(1, 5, stop_requested=True)).kind is ExitKind.STOPPED
    finished = ExitContext(1, 5, stop_requested=True, done_reported=True)
    assert classify(drained, [], finished).kind is ExitKind.COMPLETED


def test_exit_zero_completes() -> None:
    verdict = classify(ExitStatus(0, None), ["CUDA error"], LATER)
    assert verdict.kind is ExitKind.COMPLETED


statuses = st.one_of(
    st.builds(ExitStatus, code=st.integers(0, 255), signal=st.none()),
    st.builds(ExitStatus, code=st.none(), signal=st.integers(1, 64)),
)
contexts = st.builds(
    ExitContext,
    attempt=st.integers(0, 1000),
    uptime_s=st.floats(0, 1e7),
    stop_requested=st.booleans(),
    hang_killed=st.booleans(),
    preemption_pending=st.booleans(),
    memory_at_limit=st.booleans(),
    done_reported=st.booleans(),
)


@given(statuses, st.lists(st.text(max_size=200), max_size=20), contexts)
def test_classify_is_total_and_consistent(
    status: ExitStatus, tail: list[str], context: ExitContext
) -> None:
    verdict = classify(status, tail, context)
    assert verdict.reason
    if status.code == 0 and context.done_reported:
        assert verdict.kind is ExitKind.COMPLETED
    elif context.stop_requested:
        assert verdict.kind is ExitKind.STOPPED
    elif context.preemption_pending:
        assert verdict.kind is ExitKind.PREEMPTED
    elif status.code == 0:
        assert verdict.kind is ExitKind.COMPLETED
    else:
        assert verdict.kind.is_failure
    if verdict.kind in (ExitKind.HANG, ExitKind.PREEMPTED, ExitKind.INFRA, ExitKind.OOM):
        assert verdict.retryable


def test_a_worker_that_left_for_another_nodes_drain_is_that_nodes_preemption() -> None:
    """PEER_DRAIN=1: relaunch (no budget), whatever the launcher's exit status; DONE=1 and
    an operator's stop of this node still win."""
    peer = ExitContext(attempt=1, uptime_s=50, peer_drained=True)
    for status in (ExitStatus(0, None), ExitStatus(1, None), ExitStatus(None, 15)):
        verdict = classify(status, [], peer)
        assert verdict.kind is ExitKind.PREEMPTED and verdict.retryable
    done = ExitContext(attempt=1, uptime_s=50, peer_drained=True, done_reported=True)
    assert classify(ExitStatus(0, None), [], done).kind is ExitKind.COMPLETED
    stopped = ExitContext(attempt=1, uptime_s=50, peer_drained=True, stop_requested=True)
    assert classify(ExitStatus(0, None), [], stopped).kind is ExitKind.STOPPED
