"""Two checkpoint tiers simulated: one tier against two on a mix of failures.

A job needs `work_s` of compute under two independent Poisson failure processes:
process failures (crash, OOM, hang, an infra error relaunched on the same host) at
one rate, machine losses (reboot, preemption, a node that does not come back) at
another. A `TierPlan` (`stalwart.policy.multilevel`) says the compute between saves
(tau1) and that every k-th save is durable (cost C2), the others to memory (C1); every
save blocks training for its cost (a durable write in the background would stall for
less: C2 is the stall that remains). A process failure rolls back to the newest save
of either tier; a machine loss to the newest durable one (the memory tier went with the
machine). Either then costs a restart R, during which failures strike too. k = 1 is
one tier: durable saves only, which the baseline takes at Daly's interval for the
combined rate. Waste is wall time minus work: lost work + save time + restart time.

All plans of one run see the same failure times and kinds (common random numbers).
Seeded and deterministic. `compare` adds the optimum of each tier count located from
the simulation alone (a sweep of plans around the analytic one, a parabola through the
lowest points, as `stalwart.sim.scaling.fitted_minimum_s` does for one tier).
"""

from __future__ import annotations

import math
import random
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from stalwart.policy.multilevel import (
    TierCosts,
    TierOptimum,
    TierPlan,
    TierRates,
    analytic_plan,
    numeric_plan,
    one_tier_plan,
    pattern_waste_fraction,
)
from stalwart.sim.engine import Draws
from stalwart.sim.scaling import SEARCH_FACTORS, fitted_minimum_s


@dataclass(frozen=True)
class TwoTierScenario:
    costs: TierCosts
    process_mtbf_s: float
    """Mean time between failures the memory tier recovers."""
    machine_mtbf_s: float
    """Mean time between machine losses, which only the durable tier recovers."""
    work_s: float
    """Compute the job needs."""
    runs: int = 200
    seed: int = 0
    max_wall_factor: float = 100.0
    """A run still unfinished after this many times `work_s` of wall time is cut off there."""

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError("runs must be >= 1")
        if not (math.isfinite(self.work_s) and self.work_s > 0):
            raise ValueError(f"work_s must be > 0, got {self.work_s!r}")

    @property
    def rates(self) -> TierRates:
        return TierRates.from_mtbf(self.process_mtbf_s, self.machine_mtbf_s)


@dataclass(frozen=True)
class TierRunWaste:
    """One run of one plan: where its wall time beyond the work went."""

    lost_s: float
    """Compute and save time thrown away by failures (memory saves lost with a machine
    count here too: their compute is redone)."""
    checkpoint_s: float
    restart_s: float
    failures: int
    machine_losses: int
    saves: int
    durable_saves: int
    finished: bool = True
    """False when cut off at `max_wall_factor`: the waste is then a lower bound."""

    @property
    def total_s(self) -> float:
        return self.lost_s + self.checkpoint_s + self.restart_s

    @property
    def lost_and_checkpoint_s(self) -> float:
        """The part a plan controls: each failure costs every plan the same restart."""
        return self.lost_s + self.checkpoint_s


def _times(rng: random.Random, rate_per_s: float) -> Iterator[float]:
    now_s = 0.0
    while True:
        now_s += rng.expovariate(rate_per_s)
        yield now_s


def _uniform(rng: random.Random) -> Iterator[float]:
    while True:
        yield rng.random()


def simulate_plan_run(
    plan: TierPlan, times: Draws, kinds: Draws, scenario: TwoTierScenario
) -> TierRunWaste:
    """One job under one plan. Failure `i` strikes at `times[i]`; it is a machine loss
    when `kinds[i]` < the machine losses' share of the rate."""
    tau_s, every = plan.memory_interval_s, plan.durable_every
    memory_s, durable_s = scenario.costs.memory_ckpt_s, scenario.costs.durable_ckpt_s
    restart_cost_s, work_s = scenario.costs.restart_s, scenario.work_s
    rates = scenario.rates
    machine_share = rates.machine_per_s / rates.total_per_s
    period_s, period_work_s = every * tau_s + (every - 1) * memory_s + durable_s, every * tau_s
    # Wall time; work at the newest save (of either tier); work at the newest durable save.
    now_s = done_s = durable_done_s = 0.0
    segment = 1  # the next save's place in its period: the `every`-th is durable
    lost_s = checkpoint_s = restart_s = 0.0
    index = failures = machine_losses = saves = durable_saves = 0
    next_failure_s = times[0]
    wall_limit_s, finished = scenario.max_wall_factor * work_s, True
    while True:
        # Skip whole periods, then whole memory segments, that end before the next failure.
        if segment == 1:
            fit = math.floor((next_failure_s - now_s) / period_s)
            skip = max(0, min(fit, math.ceil((work_s - done_s) / period_work_s) - 1))
            now_s += skip * period_s
            done_s += skip * period_work_s
            durable_done_s = done_s if skip else durable_done_s
            checkpoint_s += skip * ((every - 1) * memory_s + durable_s)
            saves += skip * every
            durable_saves += skip
        if segment < every:
            fit = math.floor((next_failure_s - now_s) / (tau_s + memory_s))
            before_last = math.ceil((work_s - done_s) / tau_s) - 1
            skip = max(0, min(fit, every - segment, before_last))
            now_s += skip * (tau_s + memory_s)
            done_s += skip * tau_s
            checkpoint_s += skip * memory_s
            saves += skip
            segment += skip
        compute_s = min(tau_s, work_s - done_s)
        final = compute_s >= work_s - done_s
        cost_s = 0.0 if final else (durable_s if segment == every else memory_s)
        end_s = now_s + compute_s + cost_s
        if next_failure_s >= end_s:
            now_s, done_s = end_s, done_s + compute_s
            if final:
                break
            checkpoint_s += cost_s
            saves += 1
            if segment == every:
                durable_done_s, segment = done_s, 1
                durable_saves += 1
            else:
                segment += 1
            continue
        lost_s += next_failure_s - now_s
        now_s = next_failure_s
        while True:  # fail, then restart; a failure during the restart starts it over
            failures += 1
            if kinds[index] < machine_share:
                machine_losses += 1
                lost_s += done_s - durable_done_s
                done_s, segment = durable_done_s, 1
            index += 1
            next_failure_s = times[index]
            if next_failure_s >= now_s + restart_cost_s or now_s > wall_limit_s:
                break
            restart_s += next_failure_s - now_s
            now_s = next_failure_s
        if now_s > wall_limit_s:
            finished = False
            break
        restart_s += restart_cost_s
        now_s += restart_cost_s
    return TierRunWaste(
        lost_s, checkpoint_s, restart_s, failures, machine_losses, saves, durable_saves, finished
    )


@dataclass(frozen=True)
class PlanResult:
    name: str
    plan: TierPlan
    runs: tuple[TierRunWaste, ...]

    def mean(self, measure: Callable[[TierRunWaste], float]) -> float:
        return sum(measure(run) for run in self.runs) / len(self.runs)


def total(run: TierRunWaste) -> float:
    return run.total_s


def lost_and_checkpoint(run: TierRunWaste) -> float:
    return run.lost_and_checkpoint_s


def waste_fraction(
    result: PlanResult, work_s: float, measure: Callable[[TierRunWaste], float] = total
) -> tuple[float, float]:
    """Mean waste per unit of work over the runs, and its standard error."""
    values = [measure(run) / work_s for run in result.runs]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def paired_ratio(
    result: PlanResult, baseline: PlanResult, measure: Callable[[TierRunWaste], float] = total
) -> tuple[float, float]:
    """Mean waste of `result` over that of `baseline`, and its standard error (paired runs)."""
    runs, base = result.runs, baseline.runs
    mean_base = sum(measure(run) for run in base) / len(base)
    if mean_base == 0:
        return math.nan, math.nan
    ratio = sum(measure(run) for run in runs) / len(runs) / mean_base
    if len(runs) < 2:
        return ratio, math.nan
    residuals = [measure(a) - ratio * measure(b) for a, b in zip(runs, base, strict=True)]
    spread = math.sqrt(sum(r * r for r in residuals) / (len(runs) - 1))
    return ratio, spread / math.sqrt(len(runs)) / mean_base


def simulate_plans(
    scenario: TwoTierScenario, plans: Sequence[tuple[str, TierPlan]]
) -> tuple[PlanResult, ...]:
    """Every plan over `scenario.runs` runs, each run's failures shared by all plans."""
    rate_per_s = scenario.rates.total_per_s
    per_plan: list[list[TierRunWaste]] = [[] for _ in plans]
    for run in range(scenario.runs):
        times = Draws(_times(random.Random(f"{scenario.seed}:{run}:failures"), rate_per_s))
        kinds = Draws(_uniform(random.Random(f"{scenario.seed}:{run}:kinds")))
        for (_, plan), results in zip(plans, per_plan, strict=True):
            results.append(simulate_plan_run(plan, times, kinds, scenario))
    return tuple(
        PlanResult(name, plan, tuple(results))
        for (name, plan), results in zip(plans, per_plan, strict=True)
    )


# --- one tier against two, with the optimum of each -----------------------------------


@dataclass(frozen=True)
class SimulatedOptimum:
    """Where the least simulated waste lies, from sweeps around a plan."""

    memory_interval_s: float | None
    """The best tau1 at the plan's k (a parabola through the lowest waste); None when
    the minimum is not bracketed or lies in the noise."""
    durable_interval_s: float | None
    """The best k tau1 at the plan's tau1, over whole k (two tiers only)."""
    best: PlanResult
    """The swept plan of least mean simulated waste."""


@dataclass(frozen=True)
class TierRow:
    """One tier count: its analytic and numeric optima, simulated, and the sweep's best."""

    tiers: int
    analytic: TierOptimum
    numeric: TierOptimum
    """The numeric minimum of the exact model (for one tier: at k = 1)."""
    simulated: PlanResult
    """The analytic plan, simulated."""
    optimum: SimulatedOptimum


@dataclass(frozen=True)
class TierComparison:
    scenario: TwoTierScenario
    one: TierRow
    two: TierRow

    def ratio(self, measure: Callable[[TierRunWaste], float] = total) -> tuple[float, float]:
        """Two tiers' simulated waste over one tier's, at their analytic plans."""
        return paired_ratio(self.two.simulated, self.one.simulated, measure)


def _durable_counts(every: int, factors: Sequence[float]) -> list[int]:
    return sorted({max(1, round(every * factor)) for factor in factors})


def _located(xs: Sequence[float], results: Sequence[PlanResult], work_s: float) -> float | None:
    # The waste is flat near its optimum: a parabola through all the sweep's points
    # (an octave each side) locates it with less noise than through the lowest five.
    if len(xs) < 3:
        return None
    return fitted_minimum_s(xs, [waste_fraction(r, work_s)[0] for r in results], window=len(xs))


def compare(scenario: TwoTierScenario, factors: Sequence[float] = SEARCH_FACTORS) -> TierComparison:
    """One tier (Daly's interval, combined rate) against two (Benoit et al.'s plan),
    each with its analytic and numeric optimum and the optimum the simulation locates:
    tau1 swept by `factors` at the analytic k, and (two tiers) k swept likewise at the
    analytic tau1."""
    costs, rates = scenario.costs, scenario.rates
    one, two = one_tier_plan(costs, rates), analytic_plan(costs, rates)
    one_numeric = numeric_plan(costs, rates, patience=0, max_every=1)
    two_numeric = numeric_plan(costs, rates)
    named: list[tuple[str, TierPlan]] = [("one tier", one.plan), ("two tiers", two.plan)]
    sweeps: list[tuple[str, list[TierPlan]]] = []
    for label, optimum in (("one", one), ("two", two)):
        plan = optimum.plan
        sweeps.append(
            (
                f"{label} tau1",
                [TierPlan(plan.memory_interval_s * f, plan.durable_every) for f in factors],
            )
        )
    everys = _durable_counts(two.plan.durable_every, factors)
    sweeps.append(("two k", [TierPlan(two.plan.memory_interval_s, k) for k in everys]))
    for label, plans in sweeps:
        named += [(f"{label} {index}", plan) for index, plan in enumerate(plans)]
    results = simulate_plans(scenario, named)
    by_name = {result.name: result for result in results}
    swept = {
        label: [by_name[f"{label} {index}"] for index in range(len(plans))]
        for label, plans in sweeps
    }

    def least(candidates: Sequence[PlanResult]) -> PlanResult:
        return min(candidates, key=lambda r: r.mean(total))

    work_s = scenario.work_s
    one_tau = [r.plan.memory_interval_s for r in swept["one tau1"]]
    two_tau = [r.plan.memory_interval_s for r in swept["two tau1"]]
    two_k = [r.plan.durable_interval_s for r in swept["two k"]]
    return TierComparison(
        scenario,
        TierRow(
            1,
            one,
            one_numeric,
            by_name["one tier"],
            SimulatedOptimum(
                _located(one_tau, swept["one tau1"], work_s),
                None,
                least(swept["one tau1"]),
            ),
        ),
        TierRow(
            2,
            two,
            two_numeric,
            by_name["two tiers"],
            SimulatedOptimum(
                _located(two_tau, swept["two tau1"], work_s),
                _located(two_k, swept["two k"], work_s),
                least(swept["two tau1"] + swept["two k"]),
            ),
        ),
    )


def expected_waste(plan: TierPlan, scenario: TwoTierScenario) -> float:
    """The exact model's waste at `plan` for the scenario's costs and rates."""
    return pattern_waste_fraction(plan, scenario.costs, scenario.rates)


# --- the table ------------------------------------------------------------------------

HOUR_S = 3600.0


def _duration(value_s: float | None) -> str:
    if value_s is None:
        return "-"
    return f"{value_s / 60:.1f} min" if value_s >= 120 else f"{value_s:.0f} s"


def _percent(value: float | None, error: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" + (f" ±{100 * error:.2f}%" if error is not None else "")


def _deviation(analytic_s: float, located_s: float | None) -> str:
    return "-" if located_s is None else f"{100 * (analytic_s / located_s - 1):+.1f}%"


def format_tier_table(comparison: TierComparison) -> str:
    """One tier against two: plans, expected and simulated waste, analytic vs simulated optimum."""
    scenario = comparison.scenario
    costs, work_s = scenario.costs, scenario.work_s
    lines = [
        f"process failures every {scenario.process_mtbf_s / HOUR_S:g} h (memory recovers "
        f"them), machine losses every {scenario.machine_mtbf_s / HOUR_S:g} h (only durable does)",
        f"C1 = {costs.memory_ckpt_s:g} s to memory, C2 = {costs.durable_ckpt_s:g} s durable, "
        f"R = {costs.restart_s:g} s; work {work_s / HOUR_S:g} h; {scenario.runs} runs, "
        f"seed {scenario.seed}",
        f"{'tiers':<6}{'optimum':<20}{'memory every':>13}{'durable every':>19}"
        f"{'waste (model)':>15}{'waste (simulated)':>20}",
    ]
    for row, analytic in (
        (comparison.one, "analytic (Daly)"),
        (comparison.two, "analytic (Benoit)"),
    ):
        simulated, error = waste_fraction(row.simulated, work_s)
        best, best_error = waste_fraction(row.optimum.best, work_s)
        located_durable = row.optimum.durable_interval_s
        if row.tiers == 1:
            located_durable = row.optimum.memory_interval_s
        entries = (
            (analytic, row.analytic.plan, row.analytic.waste_fraction, (simulated, error)),
            ("numeric (model)", row.numeric.plan, row.numeric.waste_fraction, None),
        )
        for label, plan, model, measured in entries:
            memory = "-" if plan.tiers == 1 else _duration(plan.memory_interval_s)
            durable = _duration(plan.durable_interval_s)
            if plan.tiers == 2:
                durable += f" (k {plan.durable_every})"
            cells = f"{row.tiers:<6}{label:<20}{memory:>13}{durable:>19}{_percent(model):>15}"
            lines.append(cells + (_percent(*measured) if measured else "-").rjust(20))
        memory = "-" if row.tiers == 1 else _duration(row.optimum.memory_interval_s)
        lines.append(
            f"{row.tiers:<6}{'simulated':<20}{memory:>13}{_duration(located_durable):>19}"
            f"{'-':>15}{_percent(best, best_error):>20}"
        )
    ratio, ratio_error = comparison.ratio()
    controlled, controlled_error = comparison.ratio(lost_and_checkpoint)
    two, one = comparison.two, comparison.one
    lines += textwrap.wrap(
        "simulated: the interval of least simulated waste, a parabola through a sweep of an "
        "octave each side of the analytic plan (memory: tau1 at its k; durable: k at its "
        "tau1); its waste: that of the best plan swept",
        width=100,
    )
    lines += textwrap.wrap(
        f"two tiers / one tier, simulated at the analytic plans: waste {ratio:.3f} "
        f"±{ratio_error:.3f}; lost work + saving (restarts excluded) {controlled:.3f} "
        f"±{controlled_error:.3f}",
        width=100,
        subsequent_indent="  ",
    )
    lines += [
        "analytic vs simulated optimum: one tier "
        f"{_deviation(one.analytic.plan.memory_interval_s, one.optimum.memory_interval_s)}; "
        "two tiers: memory "
        f"{_deviation(two.analytic.plan.memory_interval_s, two.optimum.memory_interval_s)}, "
        "durable "
        f"{_deviation(two.analytic.plan.durable_interval_s, two.optimum.durable_interval_s)}",
    ]
    return "\n".join(lines)
