"""Silent failures: a loss that turns non-finite, or spikes and stays up. Pure.

Not every failure crashes. A loss that becomes NaN, or jumps and never comes back, keeps
the process alive while every new checkpoint preserves the damage. Large runs handle it
by hand (the PaLM paper reports about 20 spikes, each handled by restarting from a
checkpoint before the spike and skipping 200-500 data batches); this module decides when
it happened, the supervisor does the rest (stop without saving, quarantine what was
written after the spike began, resume before it, skip ahead in the data).

`LossMonitor` reads the `LOSS=<float>` of the trainer's heartbeats. A spike is a report
above `median + max(spike_mads x 1.4826 x MAD, min_rise_fraction x |median|)` of a window
of recent healthy reports (robust statistics: one outlier moves neither the median nor
the MAD); `persist_reports` spike reports in a row are a divergence, and so is one
non-finite loss. Spike reports never enter the window, so a loss that stays up cannot
become the new normal. A trainer that sends no loss is never judged.

`DivergenceRollbacks` bounds the recovery like the crash-loop rule bounds its rollbacks:
at most `max_rollbacks` per run, then give up (exit 3) naming the spikes.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from dataclasses import dataclass

from pydantic import Field

from stalwart.policy.section import Section

MAD_TO_SIGMA = 1.4826
"""MAD x this estimates the standard deviation of normally distributed noise."""


class DivergenceConfig(Section):
    """When a reported loss counts as diverged, and how the job recovers (`LOSS=` reports)."""

    enabled: bool = True
    """Judge the loss the trainer reports; without `LOSS=` reports nothing is ever judged."""
    window_reports: int = Field(default=64, ge=4)
    """Healthy reports in the baseline (its median and MAD)."""
    warmup_reports: int = Field(default=16, ge=2)
    """Healthy reports needed before a spike can be called (a non-finite loss always is)."""
    spike_mads: float = Field(default=8.0, gt=0)
    """A spike is this many robust standard deviations (1.4826 x MAD) above the median..."""
    min_rise_fraction: float = Field(default=0.25, ge=0)
    """...and at least this fraction of the median above it (noise-free curves, slow rises)."""
    persist_reports: int = Field(default=10, ge=1)
    """Spike reports in a row that make a divergence; one healthy report ends the spike."""
    max_rollbacks: int = Field(default=3, ge=0)
    """Divergence rollbacks allowed per run; one more divergence gives up (exit 3)."""
    skip_batches: int = Field(default=200, ge=0)
    """Batches to skip past the resumed checkpoint's data position after a rollback
    (PaLM: 200-500). It must cover the checkpoint interval and the bad stretch."""


class DivergenceKind(enum.Enum):
    NONFINITE = "non-finite loss"
    SPIKE = "loss spike"


@dataclass(frozen=True)
class Divergence:
    """A divergence and where it began."""

    kind: DivergenceKind
    step: int
    """The step of the report that made it a divergence."""
    loss: float
    began_after_step: int | None
    """The last step with a healthy report before the spike (None: none this attempt).
    Checkpoints of later steps may hold the damage."""
    first_bad_step: int
    """The step of the first report of the spike (or the non-finite one)."""
    median: float | None
    threshold: float | None

    def describe(self) -> str:
        where = f"step {self.first_bad_step}"
        if self.first_bad_step != self.step:
            where += f"-{self.step}"
        if self.kind is DivergenceKind.NONFINITE:
            return f"{self.kind.value} ({self.loss}) at {where}"
        return (
            f"{self.kind.value} at {where}: loss {self.loss:.4g} above {self.threshold:.4g} "
            f"(median {self.median:.4g}) for the last reports"
        )


class LossMonitor:
    """Feeds on (step, loss) reports; says when the loss diverged. One per run: the baseline
    survives relaunches (a rollback resumes near the level it had), the spike streak does not."""

    def __init__(self, config: DivergenceConfig) -> None:
        self.config = config
        self._window: deque[float] = deque(maxlen=config.window_reports)
        self._streak = 0
        self._first_bad_step: int | None = None
        self.last_healthy_step: int | None = None
        self.reports = 0

    def new_attempt(self) -> None:
        """A relaunch: nothing it reports continues the previous attempt's spike."""
        self._streak = 0
        self._first_bad_step = None
        self.last_healthy_step = None

    def baseline(self) -> tuple[float, float] | None:
        """(median, threshold) of the window, once warmed up."""
        if len(self._window) < self.config.warmup_reports:
            return None
        values = sorted(self._window)
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        rise = max(
            self.config.spike_mads * MAD_TO_SIGMA * mad,
            self.config.min_rise_fraction * abs(median),
        )
        return median, median + rise

    def observe(self, step: int, loss: float) -> Divergence | None:
        """One report; a Divergence when this one makes it (then the streak starts over)."""
        if not self.config.enabled:
            return None
        self.reports += 1
        if not math.isfinite(loss):
            return self._diverged(DivergenceKind.NONFINITE, step, loss, None)
        base = self.baseline()
        if base is not None and loss > base[1]:
            self._streak += 1
            if self._first_bad_step is None:
                self._first_bad_step = step
            if self._streak >= self.config.persist_reports:
                return self._diverged(DivergenceKind.SPIKE, step, loss, base)
            return None
        self._streak = 0
        self._first_bad_step = None
        self._window.append(loss)
        self.last_healthy_step = step
        return None

    def _diverged(
        self, kind: DivergenceKind, step: int, loss: float, base: tuple[float, float] | None
    ) -> Divergence:
        first = self._first_bad_step if self._first_bad_step is not None else step
        found = Divergence(
            kind,
            step,
            loss,
            self.last_healthy_step,
            first,
            base[0] if base is not None else None,
            base[1] if base is not None else None,
        )
        self._streak = 0
        self._first_bad_step = None
        return found


@dataclass(frozen=True)
class RollbackVerdict:
    rollback: bool = False
    """Quarantine what was written after the spike began, resume before it, skip ahead."""
    give_up: str | None = None
    """Stop relaunching, with this reason (rollbacks exhausted)."""


class DivergenceRollbacks:
    """At most `max_rollbacks` divergence rollbacks per run; the spikes, for the reason."""

    def __init__(self, max_rollbacks: int) -> None:
        self.max_rollbacks = max_rollbacks
        self.spikes: list[str] = []
        """Each divergence seen this run, described (`Divergence.describe`)."""

    @property
    def rollbacks(self) -> int:
        return min(len(self.spikes), self.max_rollbacks)

    def on_divergence(self, described: str) -> RollbackVerdict:
        done = len(self.spikes)
        self.spikes.append(described)
        if done >= self.max_rollbacks:
            listed = "; ".join(f"{i + 1}: {s}" for i, s in enumerate(self.spikes))
            return RollbackVerdict(
                give_up=f"the loss diverged {len(self.spikes)} times ({listed}); divergence "
                f"rollbacks exhausted ({done} of {self.max_rollbacks})"
            )
        return RollbackVerdict(rollback=True)
