"""Restart policy and the process state machine. Pure: time comes in as `now_s`.

The policy answers one question after every attempt: relaunch (after how long),
finish, or give up. Backoff grows per consecutive failure with jitter and a cap,
and resets after a healthy uptime; failures inside a sliding window spend a
budget; preemptions spend none.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from stalwart.policy.section import NonNegativeS, PositiveS, Section
from stalwart.types import Classification, ExitKind

logger = logging.getLogger(__name__)


class RestartConfig(Section):
    """When and how fast a failed trainer is relaunched."""

    max_restarts: int = Field(default=10, ge=0)
    """Relaunches allowed within `window_s`; one more failure gives up (exit 3)."""
    window_s: PositiveS = 3600.0
    """Sliding window over which failures spend the restart budget."""
    backoff_initial_s: NonNegativeS = 1.0
    """Backoff ceiling after the first consecutive failure."""
    backoff_max_s: NonNegativeS = 300.0
    """Cap on the backoff ceiling."""
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    """Growth of the backoff ceiling per consecutive failure."""
    jitter: Literal["full", "equal", "none"] = "full"
    """full: uniform in [0, ceiling]; equal: [ceiling/2, ceiling]; none: the ceiling."""
    healthy_uptime_s: NonNegativeS = 600.0
    """An attempt that ran this long resets the backoff to its initial value."""
    started_after_s: NonNegativeS = 5.0
    """An attempt alive this long counts as started (STARTING -> RUNNING)."""
    poison_after_failures: int = Field(default=3, ge=1)
    """Failures in a row after resuming from the same checkpoint, with no newer checkpoint
    written, that mark it as poison: it is quarantined and the previous one is used."""
    max_rollbacks: int = Field(default=2, ge=0)
    """Poison rollbacks allowed per run; one more poison checkpoint gives up (exit 3)."""

    @model_validator(mode="after")
    def _cap_covers_initial(self) -> RestartConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )
        return self


class Action(enum.Enum):
    RESTART = "restart"
    FINISH = "finish"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float
    reason: str
    ceiling_s: float = 0.0
    """The backoff ceiling the delay was drawn under (for logs and tests)."""


class RestartPolicy:
    """Decides what follows each attempt. Holds only the failure history it needs."""

    def __init__(self, config: RestartConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._failures_s: deque[float] = deque()
        self._consecutive = 0

    @property
    def failures_in_window(self) -> int:
        return len(self._failures_s)

    def ceiling_s(self, consecutive: int) -> float:
        """Backoff ceiling after `consecutive` failures in a row (>= 1)."""
        cfg = self._config
        exponent = max(consecutive - 1, 0)
        if cfg.backoff_initial_s == 0 or cfg.backoff_multiplier == 1:
            return cfg.backoff_initial_s
        # In log space, so a long failure streak cannot overflow a float.
        headroom = math.log(cfg.backoff_max_s / cfg.backoff_initial_s)
        if exponent * math.log(cfg.backoff_multiplier) >= headroom:
            return cfg.backoff_max_s
        return min(cfg.backoff_max_s, cfg.backoff_initial_s * cfg.backoff_multiplier**exponent)

    def _jitter(self, ceiling_s: float) -> float:
        mode = self._config.jitter
        if mode == "none":
            return ceiling_s
        if mode == "equal":
            return ceiling_s / 2 + self._rng.uniform(0, ceiling_s / 2)
        return self._rng.uniform(0, ceiling_s)

    def on_exit(
        self, now_s: float, verdict: Classification, uptime_s: float, *, spend_budget: bool = True
    ) -> Decision:
        """The decision after an attempt that ended at `now_s` having run `uptime_s`.

        `spend_budget=False` for failures that say nothing about the job (injected ones).
        """
        cfg = self._config
        if not verdict.kind.is_failure:
            return Decision(Action.FINISH, 0.0, verdict.reason)
        if uptime_s >= cfg.healthy_uptime_s:
            self._consecutive = 0
        if not verdict.retryable:
            return Decision(
                Action.GIVE_UP, 0.0, f"{verdict.kind.value} is not retryable: {verdict.reason}"
            )
        self._consecutive += 1
        if verdict.kind is ExitKind.PREEMPTED or not spend_budget:
            # The machine went away under the job (or a fault was injected): nothing about the job.
            ceiling = cfg.backoff_initial_s
            why = "preempted" if verdict.kind is ExitKind.PREEMPTED else "injected"
            return Decision(
                Action.RESTART, self._jitter(ceiling), f"{why}; no budget spent", ceiling
            )
        self._failures_s.append(now_s)
        while self._failures_s and self._failures_s[0] <= now_s - cfg.window_s:
            self._failures_s.popleft()
        if len(self._failures_s) > cfg.max_restarts:
            return Decision(
                Action.GIVE_UP,
                0.0,
                f"restart budget spent: {len(self._failures_s)} failures within "
                f"{cfg.window_s:g} s (max_restarts={cfg.max_restarts}); last: {verdict.reason}",
            )
        ceiling = self.ceiling_s(self._consecutive)
        delay = self._jitter(ceiling)
        return Decision(
            Action.RESTART,
            delay,
            f"{verdict.kind.value}: {verdict.reason}; failure {len(self._failures_s)} of "
            f"{cfg.max_restarts + 1} allowed in {cfg.window_s:g} s",
            ceiling,
        )


class State(enum.Enum):
    """Where the supervised process is (after supervisord's process states)."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset(
        {State.RUNNING, State.STOPPING, State.BACKOFF, State.EXITED, State.FATAL}
    ),
    State.RUNNING: frozenset({State.STOPPING, State.BACKOFF, State.EXITED, State.FATAL}),
    State.BACKOFF: frozenset({State.STARTING, State.EXITED, State.FATAL}),
    State.STOPPING: frozenset({State.EXITED, State.FATAL}),
    State.EXITED: frozenset(),
    State.FATAL: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class StateMachine:
    """The current state; every transition is checked and logged here, nowhere else."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.state = State.BACKOFF  # before the first launch: waiting for nothing
        self.history: list[tuple[State, State, str]] = []

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self.state]

    def to(self, new: State, reason: str) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self._name}: {self.state.value} -> {new.value} ({reason})")
        logger.info("%s: %s -> %s (%s)", self._name, self.state.value, new.value, reason)
        self.history.append((self.state, new, reason))
        self.state = new


@dataclass(frozen=True)
class PoisonVerdict:
    """What the crash-loop rule says after an attempt."""

    rollback: str | None = None
    """Quarantine this checkpoint (reason `poison`) and resume from the one before it."""
    give_up: str | None = None
    """Stop relaunching, with this reason (rollbacks exhausted)."""


NOT_POISON_KINDS = frozenset({ExitKind.PREEMPTED, ExitKind.STOPPED, ExitKind.COMPLETED})
"""Ends that say nothing about the checkpoint the attempt resumed from."""


class PoisonTracker:
    """Crash-loop rollback: repeated failures after resuming from the same checkpoint,
    with no newer checkpoint in between, mark that checkpoint as poison.

    A checkpoint that loads but makes the trainer crash every time (NaN weights, a bug
    triggered by restored state) would otherwise trap the job until the budget is spent.
    Each checkpoint is rolled back at most once, and at most `max_rollbacks` per run.
    """

    def __init__(self, failures_to_poison: int, max_rollbacks: int) -> None:
        self._threshold = failures_to_poison
        self._max_rollbacks = max_rollbacks
        self._suspect: str | None = None
        self._count = 0
        self.rolled_back: list[str] = []

    def on_attempt_end(
        self,
        resumed_from: str | None,
        produced_checkpoint: bool,
        kind: ExitKind,
        *,
        evidence: bool = True,
    ) -> PoisonVerdict:
        """`evidence=False` for an end that says nothing either way (killed from outside:
        SIGKILL by someone else, an injected fault): the streak neither grows nor resets."""
        if not evidence and not produced_checkpoint:
            return PoisonVerdict()
        if produced_checkpoint or kind in NOT_POISON_KINDS or resumed_from is None:
            self._suspect, self._count = None, 0
            return PoisonVerdict()
        if resumed_from != self._suspect:
            self._suspect, self._count = resumed_from, 0
        # A trainer that says its checkpoint is unreadable needs no second opinion.
        self._count = self._threshold if kind is ExitKind.CHECKPOINT_CORRUPT else self._count + 1
        if self._count < self._threshold:
            return PoisonVerdict()
        self._suspect, self._count = None, 0
        if resumed_from in self.rolled_back or len(self.rolled_back) >= self._max_rollbacks:
            tried = ", ".join([*self.rolled_back, resumed_from])
            return PoisonVerdict(
                give_up=f"every attempt fails after resuming, checkpoints tried: {tried}; "
                f"rollbacks exhausted ({len(self.rolled_back)} of {self._max_rollbacks})"
            )
        self.rolled_back.append(resumed_from)
        return PoisonVerdict(rollback=resumed_from)
