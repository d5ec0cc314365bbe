"""Two checkpoint tiers: how often to save to memory and how often to the durable tier.

Pure: no I/O, no clock. A memory-tier save (tmpfs, /dev/shm) survives a crash of the
trainer but not the loss of the machine; a durable save (disk, remote) survives both.

The pattern (nested, as in the multi-level literature): compute `memory_interval_s`
(tau1), save; every `durable_every`-th save (k) goes to the durable tier, the others to
memory. A durable save also leaves the memory tier holding the same state, so its
measured stall C2 includes C1: both are the time training is blocked (with a durable
write in the background, C2 is the stall that remains). A failure that leaves the
machine standing (rate lambda1) rolls back to the newest save of either tier; a machine
loss (rate lambda2) rolls back to the newest durable one. Either then costs a restart R.
k = 1 is one tier: every save durable.

The analytic optimum is the first-order one of Benoit, Cavelan, Le Fevre, Robert and
Sun, "Towards Optimal Multi-Level Checkpointing", IEEE Trans. Computers 66(7):1212-1226
(2017), which extends Young's formula and Di et al. (IPDPS 2014) to nested levels: per
unit of work the overhead is

    C1/tau1 + lambda1 tau1/2 + (C2 - C1)/(k tau1) + lambda2 k tau1/2 + (lambda1 + lambda2) R

so each level has its own Young's interval, tau1 = sqrt(2 C1 / lambda1) for memory and
k tau1 = sqrt(2 (C2 - C1) / lambda2) for durable, i.e. k = sqrt((C2 - C1)/C1 x
lambda1/lambda2); the total overhead is sqrt(2 lambda1 C1) + sqrt(2 lambda2 (C2 - C1)).
For a whole k the pattern has an effective cost C1 + (C2 - C1)/k and rate lambda1 +
k lambda2, and `analytic_plan` takes Daly's (2006) higher-order interval for those, so
k = 1 is exactly Daly's interval for the combined rate (and lambda1 = 0 gives k = 1).

`pattern_waste_fraction` is the exact expected waste of the same pattern for
exponential failures striking during compute, saves and restarts alike (the two-level
counterpart of `stalwart.policy.interval.expected_waste_fraction`, equal to it for
k = 1); `numeric_plan` minimises it, which is what `analytic_plan` is checked against.

`TierRateEstimator` learns lambda1 and lambda2 from past failures: which kinds, whether
the machine survived, and whether the memory tier was found intact after the relaunch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from stalwart.policy.estimators import NOT_MACHINE_FAILURES
from stalwart.policy.interval import daly_interval_s
from stalwart.types import ExitKind

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_MAX_EXPONENT = 700.0
"""exp() of more than this overflows a float; the waste is then effectively infinite."""
MAX_DURABLE_EVERY = 100_000
"""The most memory saves per durable one any plan here proposes."""


def _check(name: str, value: float, *, zero_ok: bool = False) -> None:
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class TierCosts:
    """What one save of each tier and one restart cost, in seconds of wall time."""

    memory_ckpt_s: float
    """C1: training blocked by a memory-tier save."""
    durable_ckpt_s: float
    """C2: training blocked by a durable save (which also refreshes the memory tier)."""
    restart_s: float
    """R: relaunch and restore, after either kind of failure."""

    def __post_init__(self) -> None:
        _check("memory_ckpt_s", self.memory_ckpt_s)
        _check("durable_ckpt_s", self.durable_ckpt_s)
        _check("restart_s", self.restart_s, zero_ok=True)

    @property
    def durable_extra_s(self) -> float:
        """C2 - C1: what a durable save costs beyond a memory one (0 if it costs no more)."""
        return max(0.0, self.durable_ckpt_s - self.memory_ckpt_s)


@dataclass(frozen=True)
class TierRates:
    """Failures per second of run time, split by the tier that can recover them."""

    memory_per_s: float
    """lambda1: failures that leave the machine (and the memory tier) standing."""
    machine_per_s: float
    """lambda2: machine losses, which only the durable tier recovers."""

    def __post_init__(self) -> None:
        _check("memory_per_s", self.memory_per_s, zero_ok=True)
        _check("machine_per_s", self.machine_per_s)

    @classmethod
    def from_mtbf(cls, memory_mtbf_s: float, machine_mtbf_s: float) -> TierRates:
        """From mean times between failures (inf: never)."""
        _check("machine_mtbf_s", machine_mtbf_s)
        if not memory_mtbf_s > 0:
            raise ValueError(f"memory_mtbf_s must be > 0, got {memory_mtbf_s!r}")
        return cls(1.0 / memory_mtbf_s, 1.0 / machine_mtbf_s)

    @property
    def total_per_s(self) -> float:
        return self.memory_per_s + self.machine_per_s

    @property
    def combined_mtbf_s(self) -> float:
        """The mean time between failures of either kind: what one tier plans for."""
        return 1.0 / self.total_per_s


@dataclass(frozen=True)
class TierPlan:
    """Compute between saves, and how many saves make one durable one."""

    memory_interval_s: float
    """tau1: compute time from the end of one save to the start of the next."""
    durable_every: int
    """k: every k-th save is durable; 1: every save is (one tier)."""

    def __post_init__(self) -> None:
        _check("memory_interval_s", self.memory_interval_s)
        if isinstance(self.durable_every, bool) or self.durable_every < 1:
            raise ValueError(f"durable_every must be a whole number >= 1, got {self.durable_every}")

    @property
    def durable_interval_s(self) -> float:
        """Compute time between durable saves: k tau1."""
        return self.durable_every * self.memory_interval_s

    @property
    def tiers(self) -> int:
        return 1 if self.durable_every == 1 else 2


# --- the waste of a pattern -----------------------------------------------------------


def _effective(k: float, costs: TierCosts, rates: TierRates) -> tuple[float, float]:
    """(cost per save, rate of failures that lose a save) of the pattern with k saves."""
    return (
        costs.memory_ckpt_s + costs.durable_extra_s / k,
        rates.memory_per_s + k * rates.machine_per_s,
    )


def first_order_waste_fraction(plan: TierPlan, costs: TierCosts, rates: TierRates) -> float:
    """Benoit et al.'s first-order overhead per unit of work (module docstring)."""
    cost_s, rate_per_s = _effective(plan.durable_every, costs, rates)
    tau_s = plan.memory_interval_s
    return cost_s / tau_s + rate_per_s * tau_s / 2.0 + rates.total_per_s * costs.restart_s


def _failure_time_before(rate_per_s: float, span_s: float) -> float:
    """E[F; F < span] for F exponential at `rate_per_s`: time spent before a failure."""
    return -math.expm1(-rate_per_s * span_s) / rate_per_s - span_s * math.exp(-rate_per_s * span_s)


def pattern_waste_fraction(plan: TierPlan, costs: TierCosts, rates: TierRates) -> float:
    """Expected wall time per unit of work, minus one, exactly, for exponential failures.

    A period is k segments (tau1 of compute, then a save: C1, the k-th C2). Failures of
    either kind strike at any time, during restarts too. With E_j the expected wall time
    to the period's end from the start of segment j, P_j from the start of a restart
    back to segment j (after a process failure), and Q from the start of a restart back
    to the period's start (after a machine loss; any failure during it starts it over):

        E_j = e^(-L a_j) (a_j + E_(j+1)) + m(a_j) + (1 - e^(-L a_j)) (l1 P_j + l2 Q) / L
        P_j = e^(-L R) (R + E_j) + m(R) + (1 - e^(-L R)) (l1 P_j + l2 Q) / L
        Q   = R + E_1 + m(R) e^(L R),      E_(k+1) = 0,

    with L = l1 + l2, a_j the segment's length and m(a) = E[F; F < a]. Each E_j is
    affine in Q; solved backward from E_(k+1) (the k - 1 like segments at once), then
    for E_1. The waste is
    E_1 / (k tau1) - 1; for k = 1 it is Daly's exact model at the combined rate.
    """
    tau_s, k = plan.memory_interval_s, plan.durable_every
    l1, l2 = rates.memory_per_s, rates.machine_per_s
    rate = l1 + l2
    restart_s = costs.restart_s
    longest_s = tau_s + max(costs.memory_ckpt_s, costs.durable_ckpt_s)
    if rate * max(longest_s, restart_s) > _MAX_EXPONENT:
        return math.inf
    share1, share2 = l1 / rate, l2 / rate
    survive_restart = math.exp(-rate * restart_s)
    before_restart_s = _failure_time_before(rate, restart_s)
    # P_j = p0 + p1 E_j + pq Q
    denominator = 1.0 - (1.0 - survive_restart) * share1
    p0 = (survive_restart * restart_s + before_restart_s) / denominator
    p1 = survive_restart / denominator
    pq = (1.0 - survive_restart) * share2 / denominator
    # E_(j+1) = alpha + beta Q. Each segment maps (alpha, beta) affinely: x -> A + r x
    # with the same r for both; the k - 1 memory segments are one map applied k - 1
    # times, in closed form, so the waste costs the same for any k.
    alpha_s, beta = 0.0, 0.0
    for length_s, times in (
        (tau_s + costs.durable_ckpt_s, 1),
        (tau_s + costs.memory_ckpt_s, k - 1),
    ):
        if times == 0:
            continue
        survive = math.exp(-rate * length_s)
        fail = -math.expm1(-rate * length_s)
        scale = 1.0 - fail * share1 * p1
        shift_alpha_s = (
            survive * length_s + _failure_time_before(rate, length_s) + fail * share1 * p0
        ) / scale
        shift_beta = fail * (share1 * pq + share2) / scale
        # r = survive / scale; 1 - r and log r computed without cancellation.
        one_minus_r = fail * (1.0 - share1 * p1) / scale
        log_r = -rate * length_s - math.log1p(-fail * share1 * p1)
        r_n = math.exp(times * log_r)
        sum_s = times if one_minus_r == 0.0 else -math.expm1(times * log_r) / one_minus_r
        alpha_s = r_n * alpha_s + shift_alpha_s * sum_s
        beta = r_n * beta + shift_beta * sum_s
    q0_s = restart_s + before_restart_s / survive_restart
    if beta >= 1.0:
        return math.inf
    period_s = (alpha_s + beta * q0_s) / (1.0 - beta)
    return period_s / plan.durable_interval_s - 1.0


# --- optima ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TierOptimum:
    """A plan, the waste expected at it (exact model), and how it was found."""

    plan: TierPlan
    waste_fraction: float
    """`pattern_waste_fraction` at `plan`."""
    method: str


def _pattern_interval_s(k: int, costs: TierCosts, rates: TierRates) -> float:
    cost_s, rate_per_s = _effective(k, costs, rates)
    return daly_interval_s(cost_s, 1.0 / rate_per_s)


def continuous_durable_every(costs: TierCosts, rates: TierRates) -> float:
    """Benoit et al.'s k* = sqrt((C2 - C1)/C1 x lambda1/lambda2), at least 1."""
    ratio = costs.durable_extra_s / costs.memory_ckpt_s * rates.memory_per_s / rates.machine_per_s
    return min(float(MAX_DURABLE_EVERY), max(1.0, math.sqrt(ratio)))


def analytic_plan(costs: TierCosts, rates: TierRates) -> TierOptimum:
    """The first-order optimum (Benoit et al. 2017) with Daly's correction per pattern.

    k* continuous, then the whole k beside it of lower first-order overhead
    sqrt(2 C_eff lambda_eff); tau1 = Daly's interval for C_eff = C1 + (C2 - C1)/k and
    M_eff = 1/(lambda1 + k lambda2). k = 1 when the memory tier cannot pay for itself.
    """
    k_star = continuous_durable_every(costs, rates)
    candidates = {max(1, math.floor(k_star)), max(1, math.ceil(k_star))}

    def overhead(k: int) -> float:
        cost_s, rate_per_s = _effective(k, costs, rates)
        return cost_s * rate_per_s

    k = min(sorted(candidates), key=overhead)
    plan = TierPlan(_pattern_interval_s(k, costs, rates), k)
    return TierOptimum(plan, pattern_waste_fraction(plan, costs, rates), "analytic")


def one_tier_plan(costs: TierCosts, rates: TierRates) -> TierOptimum:
    """Durable saves only, at Daly's interval for C2 and the combined failure rate."""
    plan = TierPlan(daly_interval_s(costs.durable_ckpt_s, rates.combined_mtbf_s), 1)
    return TierOptimum(plan, pattern_waste_fraction(plan, costs, rates), "one tier (Daly)")


def golden_minimum(function: Callable[[float], float], low: float, high: float) -> float:
    """The argument in [low, high] of least `function` (unimodal), by golden-section
    search over log(argument); both bounds > 0."""
    _check("low", low)
    _check("high", high)
    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = function(math.exp(c)), function(math.exp(d))
    while b - a > 1e-9:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = function(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = function(math.exp(d))
    return math.exp((a + b) / 2.0)


def numeric_plan(
    costs: TierCosts, rates: TierRates, patience: int = 8, max_every: int = MAX_DURABLE_EVERY
) -> TierOptimum:
    """The plan of least `pattern_waste_fraction`, found without the formulas.

    For each k = 1, 2, ... the best tau1 by golden-section search in (0, 1/L]; k goes up
    until the best has not improved for `patience` steps and k is past twice the best
    (the waste is unimodal in k), or to `max_every` (1: the best one-tier interval).
    """
    bound_s = 1.0 / rates.total_per_s
    best: TierOptimum | None = None
    k = 0
    while k < max_every:
        k += 1

        def waste(tau_s: float, k: int = k) -> float:
            return pattern_waste_fraction(TierPlan(tau_s, k), costs, rates)

        tau_s = golden_minimum(waste, bound_s * 1e-9, bound_s)
        found = waste(tau_s)
        if best is None or found < best.waste_fraction:
            best = TierOptimum(TierPlan(tau_s, k), found, "numeric")
        elif k > max(2 * best.plan.durable_every, best.plan.durable_every + patience):
            break
    assert best is not None
    return best


# --- learning the two rates -----------------------------------------------------------

DEFAULT_MEMORY_INTACT: Mapping[ExitKind, float] = {
    ExitKind.OOM: 0.9,
    ExitKind.HANG: 0.9,
    ExitKind.INFRA: 0.7,
    ExitKind.CHECKPOINT_CORRUPT: 0.5,
    ExitKind.UNKNOWN: 0.5,
    ExitKind.PREEMPTED: 0.1,
}
"""Prior chance, per kind, that the memory tier is found intact after the relaunch:
a process killed for memory or a hang leaves the host up; an infrastructure error
(NCCL, Xid, I/O) usually does; an attempt left open by a dead supervisor (UNKNOWN) is
often a reboot; a preemption ends the machine."""


@dataclass(frozen=True)
class TierFailureRecord:
    """One attempt's run time and how it ended, as the journal and the memory tier saw it."""

    exposure_s: float
    """Run time of the attempt."""
    kind: ExitKind | None = None
    """How it ended; None (or a kind that is not a machine failure): no failure counted."""
    machine_survived: bool | None = None
    """Whether the relaunch found the same machine (same boot); None: unknown."""
    memory_intact: bool | None = None
    """Whether the relaunch found the memory tier intact; None: not looked at."""


@dataclass(frozen=True)
class TierRateEstimate:
    """The two learned rates, and what they stand on."""

    rates: TierRates
    memory_failures: float
    """Discounted failures the memory tier recovered (or would have), prior excluded."""
    machine_failures: float
    """Discounted failures that only the durable tier could recover, prior excluded."""
    exposure_s: float
    """Discounted run time observed, prior excluded."""
    memory_intact_by_kind: Mapping[ExitKind, float]
    """Posterior chance per kind that the memory tier survives a failure of that kind."""


class TierRateEstimator:
    """lambda1 and lambda2: a Gamma-Poisson posterior each over failures per run second,
    with `stalwart.policy.estimators`' conventions (a prior worth `prior_weight_failures`
    failures at a prior MTBF, run time forgotten with `half_life_s`, the prior faded
    with the data).

    Each failure is split between the two: by what the relaunch found of the memory
    tier where that is known; else by whether the machine survived (a machine loss is
    durable-only; a surviving machine kept its tmpfs); else by the posterior chance that
    its kind leaves the memory tier intact, a Beta prior per kind (`memory_intact_prior`,
    worth `prior_weight_relaunches` relaunches) updated by every relaunch that looked.
    """

    def __init__(
        self,
        *,
        prior_memory_mtbf_s: float = 86400.0,
        prior_machine_mtbf_s: float = 7 * 86400.0,
        prior_weight_failures: float = 1.0,
        half_life_s: float | None = None,
        memory_intact_prior: Mapping[ExitKind, float] = DEFAULT_MEMORY_INTACT,
        prior_weight_relaunches: float = 2.0,
    ) -> None:
        _check("prior_memory_mtbf_s", prior_memory_mtbf_s)
        _check("prior_machine_mtbf_s", prior_machine_mtbf_s)
        _check("prior_weight_failures", prior_weight_failures)
        _check("prior_weight_relaunches", prior_weight_relaunches)
        if half_life_s is not None:
            _check("half_life_s", half_life_s)
        if any(not 0.0 <= p <= 1.0 for p in memory_intact_prior.values()):
            raise ValueError("memory_intact_prior chances must be in [0, 1]")
        self._half_life_s = half_life_s
        self._prior_failures = prior_weight_failures
        self._prior_exposure_s = (
            prior_weight_failures * prior_memory_mtbf_s,
            prior_weight_failures * prior_machine_mtbf_s,
        )
        self._prior_left = 1.0
        self._exposure_s = 0.0
        self._memory_failures = 0.0
        self._machine_failures = 0.0
        self._intact: dict[ExitKind, list[float]] = {
            kind: [prior_weight_relaunches * p, prior_weight_relaunches * (1.0 - p)]
            for kind, p in memory_intact_prior.items()
        }
        self._default_intact = [prior_weight_relaunches * 0.5, prior_weight_relaunches * 0.5]

    def observe_all(self, records: Iterable[TierFailureRecord]) -> TierRateEstimator:
        """Feed history (e.g. rebuilt from the journal's attempts), oldest record first."""
        for record in records:
            self.observe(record)
        return self

    def memory_intact_chance(self, kind: ExitKind) -> float:
        intact, lost = self._intact.get(kind, self._default_intact)
        return intact / (intact + lost)

    def observe(self, record: TierFailureRecord) -> None:
        """One attempt; its failure, if any, at the end of its run time."""
        _check("exposure_s", record.exposure_s, zero_ok=True)
        keep, added_s = 1.0, record.exposure_s
        if self._half_life_s is not None:
            decay = math.log(2) / self._half_life_s
            keep = math.exp(-decay * record.exposure_s)
            added_s = -math.expm1(-decay * record.exposure_s) / decay
        self._prior_left *= keep
        self._exposure_s = self._exposure_s * keep + added_s
        self._memory_failures *= keep
        self._machine_failures *= keep
        kind = record.kind
        if kind is None or kind in NOT_MACHINE_FAILURES:
            return
        if record.memory_intact is not None:
            counts = self._intact.setdefault(kind, list(self._default_intact))
            counts[0 if record.memory_intact else 1] += 1.0
            share = 1.0 if record.memory_intact else 0.0
        elif record.machine_survived is not None:
            share = 1.0 if record.machine_survived else 0.0
        else:
            share = self.memory_intact_chance(kind)
        self._memory_failures += share
        self._machine_failures += 1.0 - share

    def estimate(self) -> TierRateEstimate:
        prior_failures = self._prior_failures * self._prior_left
        rates = tuple(
            (prior_failures + failures) / (prior_s * self._prior_left + self._exposure_s)
            for failures, prior_s in zip(
                (self._memory_failures, self._machine_failures), self._prior_exposure_s, strict=True
            )
        )
        if rates[1] <= 0.0 or not math.isfinite(rates[1]):
            raise ValueError("no machine-loss rate left to estimate (everything forgotten)")
        return TierRateEstimate(
            rates=TierRates(rates[0], rates[1]),
            memory_failures=self._memory_failures,
            machine_failures=self._machine_failures,
            exposure_s=self._exposure_s,
            memory_intact_by_kind={kind: self.memory_intact_chance(kind) for kind in self._intact},
        )
