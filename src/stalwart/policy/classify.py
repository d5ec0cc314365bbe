"""Exit classification: how an attempt ended -> what kind of failure, and may it be retried.

Pure: the inputs are the exit status, the last output lines and what the
supervisor knew at the time (it killed a hang, a preemption was pending, memory
was at its limit). No I/O, no clock.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, field_validator

from stalwart.policy.section import Section
from stalwart.types import Classification, ExitKind, ExitStatus, signal_name


class PatternRule(Section):
    """A line pattern that decides the kind of a failure."""

    regex: str
    """Python regular expression searched in each of the last output lines."""
    kind: ExitKind
    """Kind assigned when it matches."""
    retryable: bool = True
    """Whether that failure may be retried."""

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class ClassifyConfig(Section):
    """How an attempt's end is classified (on top of the built-in rules)."""

    non_retryable_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = []
    """Exit codes that mean the job cannot succeed by retrying (exit 3 at once)."""
    patterns: list[PatternRule] = []
    """Rules tried before the built-in ones, newest output line first."""


@dataclass(frozen=True)
class ExitContext:
    """What the supervisor knew when the attempt ended."""

    attempt: int
    uptime_s: float
    stop_requested: bool = False
    hang_killed: bool = False
    preemption_pending: bool = False
    memory_at_limit: bool = False
    done_reported: bool = False
    """The trainer said DONE=1: an exit 0 is completion even while draining."""
    peer_drained: bool = False
    """The trainer said PEER_DRAIN=1: it saved and left because another node of a
    multi-node job drained (that node's preemption or stop), not because it finished."""
    diverged: str | None = None
    """The loss diverged and the supervisor killed it (the divergence, described)."""


@dataclass(frozen=True)
class Rule:
    """A compiled line pattern and the verdict it implies."""

    pattern: re.Pattern[str]
    kind: ExitKind
    retryable: bool
    first_attempt_only: bool = False
    """For user errors: fatal on the first attempt; later the same line may be transient."""


def _rule(regex: str, kind: ExitKind, retryable: bool = True, first_only: bool = False) -> Rule:
    return Rule(re.compile(regex), kind, retryable, first_only)


DEFAULT_RULES: tuple[Rule, ...] = (
    # Checkpoint loading failures: the restart policy may roll back to an older one.
    _rule(
        r"PytorchStreamReader failed|invalid load key|SafetensorError|"
        r"CheckpointCorrupt|UnsafeCheckpoint|CheckpointInvalid|"
        r"unexpected EOF, expected \d+ more bytes",
        ExitKind.CHECKPOINT_CORRUPT,
    ),
    _rule(
        r"CUDA out of memory|OutOfMemoryError|\bMemoryError\b|Cannot allocate memory|"
        r"HIP out of memory|RESOURCE_EXHAUSTED",
        ExitKind.OOM,
    ),
    _rule(
        r"\bNCCL\b.*(error|Error|timeout|Timeout|WARN)|ncclInternalError|ncclSystemError|"
        r"CUDA error|CUBLAS_STATUS|cudaError|CUDNN_STATUS_INTERNAL_ERROR|"
        r"uncorrectable ECC|\bXid\b|device-side assert|"
        r"Connection reset by peer|RendezvousTimeoutError|DistNetworkError|"
        r"Input/output error|Stale file handle|No space left on device|File too large|"
        r"Disk quota exceeded|\bDiskFull\b",
        ExitKind.INFRA,
    ),
    _rule(
        r"\b(SyntaxError|IndentationError|TabError|ModuleNotFoundError|ImportError)\b|"
        r"can't open file|No module named|unrecognized arguments:|"
        r"command not found",
        ExitKind.USER_ERROR,
        retryable=False,
        first_only=True,
    ),
)

SIGNAL_KINDS: dict[int, ExitKind] = {
    signal.SIGBUS: ExitKind.INFRA,
    signal.SIGSEGV: ExitKind.UNKNOWN,
}


def compile_rules(
    patterns: Iterable[tuple[str, ExitKind, bool]],
) -> tuple[Rule, ...]:
    """User rules (regex, kind, retryable) first, then the built-in ones."""
    return (
        tuple(_rule(regex, kind, retryable) for regex, kind, retryable in patterns) + DEFAULT_RULES
    )


def _match_output(
    tail: Sequence[str], rules: Sequence[Rule], attempt: int
) -> Classification | None:
    # The newest line wins: a traceback ends with the exception that killed the job,
    # while earlier lines may mention errors that were survived.
    for line in reversed(tail):
        for rule in rules:
            if rule.pattern.search(line) is None:
                continue
            retryable = rule.retryable
            if rule.first_attempt_only and attempt > 0:
                retryable = True
            snippet = line.strip()[:200]
            return Classification(
                rule.kind, retryable, f"output matched {rule.kind.value}: {snippet}"
            )
    return None


def classify(
    status: ExitStatus,
    tail: Sequence[str],
    context: ExitContext,
    *,
    rules: Sequence[Rule] = DEFAULT_RULES,
    non_retryable_exit_codes: frozenset[int] = frozenset(),
) -> Classification:
    """The kind of this attempt's end, whether to retry it, and why (for the journal)."""
    described = status.describe()
    if context.diverged is not None:
        # Even an exit 0: what it trained (and saved) since the spike is damaged.
        return Classification(
            ExitKind.DIVERGED, True, f"{context.diverged}; killed by the supervisor ({described})"
        )
    if status.code == 0 and context.done_reported:
        return Classification(ExitKind.COMPLETED, False, "exit code 0 after DONE=1")
    if context.stop_requested:
        return Classification(ExitKind.STOPPED, False, f"stopped on request ({described})")
    if context.preemption_pending:
        # Also an exit 0: a trainer that drained for a preemption has not finished training.
        return Classification(ExitKind.PREEMPTED, True, f"machine is being preempted ({described})")
    if context.peer_drained:
        # Leaving was the job's, not this node's (whatever the launcher's exit status after
        # its workers left): relaunch and rejoin the others at the rendezvous.
        return Classification(
            ExitKind.PREEMPTED,
            True,
            f"another node drained the job, its preemption or stop ({described})",
        )
    if status.code == 0:
        return Classification(ExitKind.COMPLETED, False, "exit code 0")
    if context.hang_killed:
        return Classification(
            ExitKind.HANG, True, f"no heartbeat; killed by the supervisor ({described})"
        )
    if status.code is not None and status.code in non_retryable_exit_codes:
        return Classification(
            ExitKind.USER_ERROR, False, f"exit code {status.code} is configured as non-retryable"
        )
    matched = _match_output(tail, rules, context.attempt)
    if matched is not None:
        return matched
    signum = status.effective_signal
    if signum == signal.SIGKILL and context.memory_at_limit:
        return Classification(ExitKind.OOM, True, f"{described} with memory at its limit")
    if signum is not None and signum in SIGNAL_KINDS:
        return Classification(SIGNAL_KINDS[signum], True, f"{described} ({signal_name(signum)})")
    return Classification(ExitKind.UNKNOWN, True, described)
