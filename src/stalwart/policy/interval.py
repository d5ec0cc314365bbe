"""The checkpoint interval: Young/Daly optimum from measured cost and estimated MTBF.

Pure: no I/O, no clock. Three layers:

- formulas: Young's (1974) first-order optimum, Daly's (2006) higher-order one,
  Daly's exact expected-waste model for exponential failures, and a numeric
  minimiser of that model (which the formula is checked against);
- `decide`: one decision from a frozen `IntervalInputs`, with bounds, the
  persist-time floor and hysteresis, giving an `IntervalDecision`;
- `IntervalModel`: the estimators of `stalwart.policy.estimators` plus the last
  decision, which the supervisor feeds measurements into and asks for advice.

The interval is compute time between checkpoints: from the end of one save's
stall to the start of the next save.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stalwart.policy.estimators import (
    DEFAULT_COUNTED_KINDS,
    NOT_MACHINE_FAILURES,
    ExposureRecord,
    FailureRateEstimator,
    MtbfEstimate,
    RestartCostEstimator,
    SaveCost,
    SaveCostEstimator,
    SaveSample,
)
from stalwart.types import ExitKind

logger = logging.getLogger(__name__)

PositiveS = Annotated[float, Field(gt=0, allow_inf_nan=False)]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_MAX_EXPONENT = 700.0
"""exp() of more than this overflows a float; the waste is then effectively infinite."""


# --- formulas -----------------------------------------------------------------------


def _check_positive(name: str, value: float, *, infinite_ok: bool = False) -> None:
    if not (value > 0 and (math.isfinite(value) or infinite_ok)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def young_interval_s(ckpt_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum: sqrt(2 C M)."""
    _check_positive("ckpt_s", ckpt_s)
    _check_positive("mtbf_s", mtbf_s, infinite_ok=True)
    return math.sqrt(2.0 * ckpt_s * mtbf_s)


def daly_interval_s(ckpt_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum (2006, eq. 37); M itself when C >= 2M.

    sqrt(2CM) [1 + (1/3) sqrt(C/2M) + (1/9) (C/2M)] - C. The restart cost does not
    enter: in the exponential model it scales the waste without moving its minimum.
    """
    _check_positive("ckpt_s", ckpt_s)
    _check_positive("mtbf_s", mtbf_s, infinite_ok=True)
    if mtbf_s == math.inf:
        return math.inf
    if ckpt_s >= 2.0 * mtbf_s:
        return mtbf_s
    ratio = ckpt_s / (2.0 * mtbf_s)
    return math.sqrt(2.0 * ckpt_s * mtbf_s) * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - ckpt_s


def expected_waste_fraction(
    interval_s: float, ckpt_s: float, mtbf_s: float, restart_s: float = 0.0
) -> float:
    """Expected wall time per unit of work, minus one, in Daly's exact model.

    Failures are exponential with mean M and may strike during compute, save and
    restart: wall/work = M e^(R/M) (e^((tau + C)/M) - 1) / tau.
    """
    _check_positive("interval_s", interval_s)
    _check_positive("mtbf_s", mtbf_s, infinite_ok=True)
    if not (ckpt_s >= 0 and restart_s >= 0):
        raise ValueError("ckpt_s and restart_s must be >= 0")
    if mtbf_s == math.inf:
        return ckpt_s / interval_s
    exponent = (interval_s + ckpt_s) / mtbf_s
    if exponent + restart_s / mtbf_s > _MAX_EXPONENT:
        return math.inf
    wall_per_work = mtbf_s * math.exp(restart_s / mtbf_s) * math.expm1(exponent) / interval_s
    return wall_per_work - 1.0


def optimal_interval_s(ckpt_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """The interval that minimises `expected_waste_fraction`, by golden-section search.

    The waste is unimodal in the interval (its derivative changes sign once), and
    its minimum lies below M, so a search over log(interval) in [1e-9 M, M] finds it.
    """
    _check_positive("ckpt_s", ckpt_s)
    _check_positive("mtbf_s", mtbf_s)

    def waste(log_interval: float) -> float:
        return expected_waste_fraction(math.exp(log_interval), ckpt_s, mtbf_s, restart_s)

    low, high = math.log(mtbf_s * 1e-9), math.log(mtbf_s)
    inner_low = high - _GOLDEN * (high - low)
    inner_high = low + _GOLDEN * (high - low)
    waste_low, waste_high = waste(inner_low), waste(inner_high)
    while high - low > 1e-10:
        if waste_low <= waste_high:
            high, inner_high, waste_high = inner_high, inner_low, waste_low
            inner_low = high - _GOLDEN * (high - low)
            waste_low = waste(inner_low)
        else:
            low, inner_low, waste_low = inner_low, inner_high, waste_high
            inner_high = low + _GOLDEN * (high - low)
            waste_high = waste(inner_high)
    return math.exp((low + high) / 2.0)


# --- config ---------------------------------------------------------------------------


class IntervalConfig(BaseModel):
    """How the checkpoint interval is chosen (adaptive from measurements, or fixed)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    mode: Literal["adaptive", "fixed"] = "adaptive"
    """adaptive: Daly's optimum from measured cost and failure rate; fixed: fixed_interval_s."""
    fixed_interval_s: PositiveS = 1800.0
    """Interval in fixed mode, and in adaptive mode until the first save is measured."""
    min_interval_s: PositiveS = 60.0
    """Shortest interval advised in adaptive mode."""
    max_interval_s: PositiveS = 21600.0
    """Longest interval advised in adaptive mode (unless a save takes longer to persist)."""
    hysteresis_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """A new optimum within this fraction of the advised interval leaves the advice alone."""
    prior_mtbf_s: PositiveS = 86400.0
    """Mean time between failures assumed before any history (run time)."""
    prior_weight_failures: PositiveS = 1.0
    """How many observed failures the prior is worth."""
    half_life_s: PositiveS | None = 172800.0
    """Run time after which a failure counts half as much; null: never forget."""
    failure_kinds: tuple[ExitKind, ...] = tuple(
        sorted(DEFAULT_COUNTED_KINDS, key=lambda kind: kind.value)
    )
    """Failure kinds that count toward the failure rate (never user errors)."""
    cost_quantile: float = Field(default=0.75, ge=0.0, le=1.0)
    """Quantile of recent save stalls taken as the checkpoint cost C."""
    cost_window_saves: int = Field(default=16, ge=1, le=10_000)
    """Number of recent saves the cost quantile is taken over."""
    restart_window_restarts: int = Field(default=16, ge=1, le=10_000)
    """Number of recent restarts the restart cost R (median) is taken over."""

    @field_validator("failure_kinds")
    @classmethod
    def _machine_failures_only(cls, value: tuple[ExitKind, ...]) -> tuple[ExitKind, ...]:
        wrong = sorted(kind.value for kind in set(value) & NOT_MACHINE_FAILURES)
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} cannot count toward the failure rate: they are not "
                "failures of the machine"
            )
        if not value:
            raise ValueError("list at least one failure kind")
        return tuple(sorted(set(value), key=lambda kind: kind.value))

    @model_validator(mode="after")
    def _bounds_ordered(self) -> IntervalConfig:
        if self.max_interval_s < self.min_interval_s:
            raise ValueError(
                f"max_interval_s ({self.max_interval_s}) must be >= "
                f"min_interval_s ({self.min_interval_s})"
            )
        return self


# --- one decision ---------------------------------------------------------------------


class Basis(enum.Enum):
    """What decided the interval."""

    FIXED = "fixed"
    """Fixed mode."""
    UNMEASURED = "unmeasured"
    """Adaptive mode, but no save measured yet: fixed_interval_s."""
    OPTIMUM = "optimum"
    """Daly's optimum, inside the bounds."""
    MIN_BOUND = "min_bound"
    MAX_BOUND = "max_bound"
    PERSIST_FLOOR = "persist_floor"
    """The latest save took longer than the optimum to persist."""
    HELD = "held"
    """The new value was within the hysteresis band of the advised one, kept."""


@dataclass(frozen=True)
class IntervalInputs:
    """Everything one decision looks at."""

    cost: SaveCost | None
    """C and P, or None before the first measured save."""
    mtbf: MtbfEstimate
    restart_s: float | None
    """R, or None before the first measured restart."""
    previous_s: float | None
    """The interval advised now, or None before the first decision."""


@dataclass(frozen=True)
class IntervalDecision:
    """An advised interval, what it was computed from and why (for the journal and log)."""

    interval_s: float
    basis: Basis
    reason: str
    changed: bool
    """Whether `interval_s` differs from the interval advised before."""
    ckpt_s: float | None
    """C used (the stall quantile)."""
    persist_s: float | None
    """P: the latest persist time, the floor."""
    restart_s: float | None
    """R, informative: it does not move the optimum."""
    mtbf_s: float
    """M used."""
    failures: float
    """Discounted failures behind M (the prior not included)."""
    optimum_s: float | None
    """Daly's optimum before bounds, floor and hysteresis."""
    expected_waste_fraction: float | None
    """Expected waste per unit of work at `interval_s` (Daly's exact model)."""


def _fmt_s(value_s: float) -> str:
    return f"{value_s / 60:.1f} min" if value_s >= 120 else f"{value_s:.0f} s"


def decide(config: IntervalConfig, inputs: IntervalInputs) -> IntervalDecision:
    """The interval to advise, from the current estimates. Pure."""
    cost, mtbf, previous_s = inputs.cost, inputs.mtbf, inputs.previous_s
    ckpt_s = cost.ckpt_s if cost is not None else None
    persist_s = cost.persist_s if cost is not None else None

    optimum_s: float | None = None
    if config.mode == "fixed":
        interval_s, basis = config.fixed_interval_s, Basis.FIXED
        reason = f"fixed mode: every {_fmt_s(interval_s)}"
        if persist_s is not None and persist_s > interval_s:
            reason += f" (note: the last save took {_fmt_s(persist_s)} to persist)"
    elif ckpt_s is None:
        interval_s, basis = config.fixed_interval_s, Basis.UNMEASURED
        reason = f"no save measured yet: {_fmt_s(interval_s)} (fixed_interval_s)"
    else:
        # A zero-cost save (measurement resolution) would give a zero optimum:
        # the minimum interval is the honest answer then.
        optimum_s = daly_interval_s(ckpt_s, mtbf.mtbf_s) if ckpt_s > 0 else 0.0
        interval_s, basis = optimum_s, Basis.OPTIMUM
        reason = (
            f"Daly optimum {_fmt_s(optimum_s)} for C={_fmt_s(ckpt_s)}, "
            f"MTBF={mtbf.mtbf_s / 3600:.2f} h ({mtbf.failures:.1f} failures)"
        )
        if interval_s < config.min_interval_s:
            interval_s, basis = config.min_interval_s, Basis.MIN_BOUND
            reason += f", raised to min_interval_s {_fmt_s(interval_s)}"
        elif interval_s > config.max_interval_s:
            interval_s, basis = config.max_interval_s, Basis.MAX_BOUND
            reason += f", lowered to max_interval_s {_fmt_s(interval_s)}"
        if persist_s is not None and interval_s < persist_s:
            interval_s, basis = persist_s, Basis.PERSIST_FLOOR
            reason += f", raised to the last persist time {_fmt_s(interval_s)}"
        if (
            previous_s is not None
            and previous_s != interval_s
            and _within_band(config, previous_s, interval_s, persist_s)
        ):
            reason += f"; within {config.hysteresis_fraction:.0%}: kept {_fmt_s(previous_s)}"
            interval_s, basis = previous_s, Basis.HELD

    waste: float | None = None
    if ckpt_s is not None:
        waste = expected_waste_fraction(interval_s, ckpt_s, mtbf.mtbf_s, inputs.restart_s or 0.0)
    return IntervalDecision(
        interval_s=interval_s,
        basis=basis,
        reason=reason,
        changed=previous_s is None or interval_s != previous_s,
        ckpt_s=ckpt_s,
        persist_s=persist_s,
        restart_s=inputs.restart_s,
        mtbf_s=mtbf.mtbf_s,
        failures=mtbf.failures,
        optimum_s=optimum_s,
        expected_waste_fraction=waste,
    )


def _within_band(
    config: IntervalConfig, previous_s: float, candidate_s: float, persist_s: float | None
) -> bool:
    """Whether keeping `previous_s` is allowed and close enough to `candidate_s`."""
    if not config.min_interval_s <= previous_s <= config.max_interval_s:
        return False
    if persist_s is not None and previous_s < persist_s:
        return False
    return abs(candidate_s - previous_s) <= config.hysteresis_fraction * previous_s


# --- the stateful model the supervisor holds ----------------------------------------


class IntervalModel:
    """Estimators plus the advised interval: measurements in, decisions out.

    Not thread-safe; the supervisor loop owns it. Rebuild it after a restart with
    `from_history` from the journal's records.
    """

    def __init__(self, config: IntervalConfig, previous_interval_s: float | None = None) -> None:
        self._config = config
        self._cost = SaveCostEstimator(config.cost_quantile, config.cost_window_saves)
        self._restart = RestartCostEstimator(config.restart_window_restarts)
        self._failures = FailureRateEstimator(
            prior_mtbf_s=config.prior_mtbf_s,
            prior_weight_failures=config.prior_weight_failures,
            half_life_s=config.half_life_s,
            counted_kinds=config.failure_kinds,
        )
        self._previous_s = previous_interval_s
        self._last: IntervalDecision | None = None

    @classmethod
    def from_history(
        cls,
        config: IntervalConfig,
        *,
        saves: Iterable[SaveSample] = (),
        restarts_s: Iterable[float] = (),
        exposures: Iterable[ExposureRecord] = (),
        previous_interval_s: float | None = None,
    ) -> IntervalModel:
        """A model as if it had seen this history, each iterable oldest first."""
        model = cls(config, previous_interval_s)
        for save in saves:
            model.observe_save(stall_s=save.stall_s, persist_s=save.persist_s)
        for restart_s in restarts_s:
            model.observe_restart(restart_s)
        for record in exposures:
            model.observe_run(record.exposure_s, record.kinds)
        return model

    @property
    def config(self) -> IntervalConfig:
        return self._config

    @property
    def last(self) -> IntervalDecision | None:
        """The most recent decision, if any."""
        return self._last

    def observe_save(self, *, stall_s: float | None = None, persist_s: float | None = None) -> None:
        """A save finished: `CKPT_STALL_S` and/or `CKPT_PERSIST_S`."""
        self._cost.observe(stall_s, persist_s)

    def observe_restart(self, restart_s: float) -> None:
        """A relaunch took `restart_s` from the old trainer's end until training resumed."""
        self._restart.observe(restart_s)

    def observe_run(self, exposure_s: float, kinds: Iterable[ExitKind] = ()) -> None:
        """An attempt ran `exposure_s` and ended as `kinds` (failures, or none)."""
        self._failures.observe(exposure_s, kinds)

    def mtbf(self, running_exposure_s: float = 0.0) -> MtbfEstimate:
        return self._failures.estimate(running_exposure_s)

    def failures_by_kind(self) -> dict[ExitKind, float]:
        return self._failures.failures_by_kind()

    def inputs(self, running_exposure_s: float = 0.0) -> IntervalInputs:
        """The frozen context a decision is made from."""
        return IntervalInputs(
            cost=self._cost.estimate(),
            mtbf=self._failures.estimate(running_exposure_s),
            restart_s=self._restart.estimate(),
            previous_s=self._previous_s,
        )

    def decide(self, running_exposure_s: float = 0.0) -> IntervalDecision:
        """Decide now and make the result the advised interval.

        `running_exposure_s`: run time of the current attempt not yet passed to
        `observe_run` (it has not failed so far, which is evidence too).
        """
        decision = decide(self._config, self.inputs(running_exposure_s))
        if decision.changed:
            logger.info("checkpoint interval %s: %s", _fmt_s(decision.interval_s), decision.reason)
        else:
            logger.debug("checkpoint interval unchanged: %s", decision.reason)
        self._previous_s = decision.interval_s
        self._last = decision
        return decision
