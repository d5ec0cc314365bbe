"""What a checkpoint costs and how often this machine fails, learned from measurements.

Pure: no I/O, no clock. The supervisor (or the simulator) feeds plain samples in;
the interval policy (`stalwart.policy.interval`) reads the estimates out.

- Save cost: the q-quantile of the last N reported stalls (`CKPT_STALL_S`), and
  the latest persist time (`CKPT_PERSIST_S`) as a floor for the interval. A
  windowed quantile moves by at most one rank per outlier, so one slow save in a
  window does not lengthen the interval, while a lasting change is followed
  within one window.
- Failure rate: a Gamma-Poisson posterior over failures per second of run time
  (exposure). The prior is a Gamma(a0, b0) with a0 = prior weight in failures and
  b0 = a0 x prior MTBF; evidence older in run time is discounted by
  2^(-age / half life), so the estimate follows a change in rate. The prior is
  treated as evidence seen before the first record and is forgotten like it: a
  prior that never faded would bias M upward on a machine that fails far more
  often than assumed (its b0 of run time would stay while the data's exposure
  is capped near half life / ln 2). Exposure and counts are discounted
  continuously, so feeding one long record or many short ones gives the same
  estimate; that is what lets the journal rebuild it after a reboot.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from stalwart.types import ExitKind

logger = logging.getLogger(__name__)

NOT_MACHINE_FAILURES: frozenset[ExitKind] = frozenset(
    {ExitKind.COMPLETED, ExitKind.STOPPED, ExitKind.USER_ERROR, ExitKind.DIVERGED}
)
"""Ends that say nothing about how often the machine fails (a diverged loss is the
training's own): never counted."""

DEFAULT_COUNTED_KINDS: frozenset[ExitKind] = frozenset(ExitKind) - NOT_MACHINE_FAILURES
"""Every failure kind that is not of the trainer's own making."""


def _check_duration(name: str, value_s: float) -> float | None:
    """The sample, or None for one that is not finite (ignored: a broken clock or report
    must not stop the supervisor). A negative one is the caller's bug."""
    if not math.isfinite(value_s):
        return None
    if value_s < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value_s!r}")
    return float(value_s)


class WindowedQuantile:
    """The q-quantile (linear interpolation) of the last `window` samples."""

    def __init__(self, quantile: float, window: int) -> None:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._quantile = quantile
        self._samples: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self._samples.append(value)

    @property
    def count(self) -> int:
        return len(self._samples)

    @property
    def latest(self) -> float | None:
        return self._samples[-1] if self._samples else None

    @property
    def value(self) -> float | None:
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        position = self._quantile * (len(ordered) - 1)
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        fraction = position - below
        return ordered[below] + (ordered[above] - ordered[below]) * fraction


@dataclass(frozen=True)
class SaveSample:
    """One save as the trainer (or the checkpoint-directory watcher) reported it."""

    stall_s: float | None
    """Time training was blocked (`CKPT_STALL_S`); None when not reported."""
    persist_s: float | None
    """Time until the save was durable (`CKPT_PERSIST_S`); None when not reported."""


@dataclass(frozen=True)
class SaveCost:
    """The save cost the interval is computed from."""

    ckpt_s: float
    """C: the quantile of recent stalls (of persist times when no stall was reported)."""
    persist_s: float | None
    """P: the latest persist time; the interval is never shorter."""
    samples: int
    """Number of samples C was taken over."""


class SaveCostEstimator:
    """C from stall samples, P from persist samples, each robust to single outliers."""

    def __init__(self, quantile: float = 0.75, window_saves: int = 16) -> None:
        self._stalls = WindowedQuantile(quantile, window_saves)
        self._persists = WindowedQuantile(quantile, window_saves)

    def observe(self, stall_s: float | None = None, persist_s: float | None = None) -> None:
        """Record one save; either measurement may be missing (or not finite: ignored)."""
        stall = None if stall_s is None else _check_duration("stall_s", stall_s)
        persist = None if persist_s is None else _check_duration("persist_s", persist_s)
        if stall is not None:
            self._stalls.add(stall)
        if persist is not None:
            self._persists.add(persist)

    def estimate(self) -> SaveCost | None:
        """The current estimate, or None before the first measured save."""
        persist_latest = self._persists.latest
        stall = self._stalls.value
        if stall is not None:
            return SaveCost(stall, persist_latest, self._stalls.count)
        persist = self._persists.value
        if persist is not None:
            # No stall reported (no client; a watcher saw the write): the save was
            # synchronous as far as we know, so training waited for all of it.
            return SaveCost(persist, persist_latest, self._persists.count)
        return None


class RestartCostEstimator:
    """R: the median of recent relaunch + restore times."""

    def __init__(self, window_restarts: int = 16) -> None:
        self._samples = WindowedQuantile(0.5, window_restarts)

    def observe(self, restart_s: float) -> None:
        """One restart's cost; one that is not finite is ignored."""
        sample = _check_duration("restart_s", restart_s)
        if sample is not None:
            self._samples.add(sample)

    def estimate(self) -> float | None:
        return self._samples.value


@dataclass(frozen=True)
class ExposureRecord:
    """Run time and how it ended: the plain record the failure rate is rebuilt from.

    One per attempt is natural: `exposure_s` = its uptime, `kinds` = its
    classification. Failures are taken to happen at the end of the exposure.
    """

    exposure_s: float
    kinds: tuple[ExitKind, ...] = ()


@dataclass(frozen=True)
class MtbfEstimate:
    """The posterior mean failure rate, expressed as a mean time between failures."""

    mtbf_s: float
    """M = 1 / posterior mean rate, over the kinds asked about; inf when all is forgotten."""
    failures: float
    """Discounted count of observed failures of those kinds (the prior not included)."""
    exposure_s: float
    """Discounted run time observed (the prior not included)."""
    prior_share: float
    """Fraction of the posterior's weight in failures that is the (faded) prior's, in [0, 1]."""

    @property
    def rate_per_h(self) -> float:
        return 3600.0 / self.mtbf_s


class FailureRateEstimator:
    """Gamma-Poisson posterior over failures per run second, with exponential forgetting."""

    def __init__(
        self,
        prior_mtbf_s: float = 86400.0,
        prior_weight_failures: float = 1.0,
        half_life_s: float | None = None,
        counted_kinds: Iterable[ExitKind] = DEFAULT_COUNTED_KINDS,
    ) -> None:
        if not (math.isfinite(prior_mtbf_s) and prior_mtbf_s > 0):
            raise ValueError(f"prior_mtbf_s must be > 0, got {prior_mtbf_s!r}")
        if not (math.isfinite(prior_weight_failures) and prior_weight_failures > 0):
            raise ValueError(f"prior_weight_failures must be > 0, got {prior_weight_failures!r}")
        if half_life_s is not None and not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0 or None, got {half_life_s!r}")
        self._prior_failures = prior_weight_failures
        self._prior_exposure_s = prior_weight_failures * prior_mtbf_s
        self._half_life_s = half_life_s
        self._counted = frozenset(counted_kinds) - NOT_MACHINE_FAILURES
        self._prior_left = 1.0
        """Weight the prior still has after forgetting."""
        self._exposure_s = 0.0
        self._failures: dict[ExitKind, float] = {}

    @classmethod
    def from_records(
        cls,
        records: Iterable[ExposureRecord],
        prior_mtbf_s: float = 86400.0,
        prior_weight_failures: float = 1.0,
        half_life_s: float | None = None,
        counted_kinds: Iterable[ExitKind] = DEFAULT_COUNTED_KINDS,
    ) -> FailureRateEstimator:
        """Rebuild from history (e.g. the journal's attempts), oldest record first."""
        estimator = cls(prior_mtbf_s, prior_weight_failures, half_life_s, counted_kinds)
        for record in records:
            estimator.observe(record.exposure_s, record.kinds)
        return estimator

    def _decay(self, exposure_s: float) -> tuple[float, float]:
        """(weight left on old data, discounted weight of `exposure_s` of new run time)."""
        if self._half_life_s is None:
            return 1.0, exposure_s
        rate = math.log(2) / self._half_life_s
        return math.exp(-rate * exposure_s), -math.expm1(-rate * exposure_s) / rate

    def observe(self, exposure_s: float, kinds: Iterable[ExitKind] = ()) -> None:
        """`exposure_s` of run time that ended in `kinds` (empty: no failure yet). Run time
        that is not finite is unknown: none is added, the failures still count."""
        keep, added_s = self._decay(_check_duration("exposure_s", exposure_s) or 0.0)
        self._prior_left *= keep
        self._exposure_s = self._exposure_s * keep + added_s
        for kind in self._failures:
            self._failures[kind] *= keep
        for kind in kinds:
            if kind.is_failure:
                self._failures[kind] = self._failures.get(kind, 0.0) + 1.0

    def failures_by_kind(self) -> dict[ExitKind, float]:
        """Discounted failure counts per kind, including kinds not counted toward M."""
        return dict(self._failures)

    def estimate(
        self, running_exposure_s: float = 0.0, kinds: Iterable[ExitKind] | None = None
    ) -> MtbfEstimate:
        """M over `kinds` (default: the counted kinds), as if `running_exposure_s` more
        run time without a failure had been observed (the attempt still running)."""
        counted = self._counted if kinds is None else frozenset(kinds) - NOT_MACHINE_FAILURES
        keep, added_s = self._decay(
            _check_duration("running_exposure_s", running_exposure_s) or 0.0
        )
        exposure_s = self._exposure_s * keep + added_s
        failures = keep * sum(n for kind, n in self._failures.items() if kind in counted)
        prior_failures = self._prior_failures * self._prior_left * keep
        alpha = prior_failures + failures
        beta_s = self._prior_exposure_s * self._prior_left * keep + exposure_s
        if alpha <= 0.0:
            # Everything forgotten (or underflowed): no failure in living memory.
            return MtbfEstimate(math.inf, failures, exposure_s, 0.0)
        return MtbfEstimate(
            mtbf_s=beta_s / alpha,
            failures=failures,
            exposure_s=exposure_s,
            prior_share=prior_failures / alpha,
        )

    def forgetting_horizon_s(self, old_weight: float) -> float:
        """Run time after which data from before it weighs less than `old_weight` (0, 1)."""
        if not 0.0 < old_weight < 1.0:
            raise ValueError(f"old_weight must be in (0, 1), got {old_weight}")
        if self._half_life_s is None:
            return math.inf
        return self._half_life_s * math.log2(1.0 / old_weight)
