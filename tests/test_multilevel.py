"""Two checkpoint tiers (issue 19): the model, its optima, the rate learner, the simulator."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.cli.simulate import main
from stalwart.policy.interval import daly_interval_s, expected_waste_fraction
from stalwart.policy.multilevel import (
    TierCosts,
    TierFailureRecord,
    TierPlan,
    TierRateEstimator,
    TierRates,
    analytic_plan,
    continuous_durable_every,
    first_order_waste_fraction,
    golden_minimum,
    numeric_plan,
    one_tier_plan,
    pattern_waste_fraction,
)
from stalwart.sim.engine import Draws
from stalwart.sim.multilevel import (
    TwoTierScenario,
    compare,
    lost_and_checkpoint,
    paired_ratio,
    simulate_plan_run,
    simulate_plans,
    waste_fraction,
)
from stalwart.types import ExitKind

HOUR = 3600.0
MIX_COSTS = TierCosts(memory_ckpt_s=2.0, durable_ckpt_s=120.0, restart_s=600.0)
MIX_RATES = TierRates.from_mtbf(4 * HOUR, 48 * HOUR)
"""The acceptance mix: process failures every 4 h, machine loss every 48 h."""


def mix_scenario(runs: int, seed: int = 0) -> TwoTierScenario:
    return TwoTierScenario(MIX_COSTS, 4 * HOUR, 48 * HOUR, 168 * HOUR, runs=runs, seed=seed)


# --- the model ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    mtbf_s=st.floats(min_value=600.0, max_value=1e7),
    cost_ratio=st.floats(min_value=1e-5, max_value=0.3),
    restart_ratio=st.floats(min_value=0.0, max_value=1.0),
    interval_ratio=st.floats(min_value=0.01, max_value=2.0),
    process_share=st.floats(min_value=0.0, max_value=0.95),
)
def test_one_tier_is_dalys_exact_model(
    mtbf_s: float,
    cost_ratio: float,
    restart_ratio: float,
    interval_ratio: float,
    process_share: float,
) -> None:
    """k = 1: every save durable, every failure back to it, whatever its kind."""
    rate = 1.0 / mtbf_s
    rates = TierRates(process_share * rate, (1.0 - process_share) * rate)
    costs = TierCosts(cost_ratio * mtbf_s / 10, cost_ratio * mtbf_s, restart_ratio * mtbf_s)
    interval_s = interval_ratio * mtbf_s
    assert pattern_waste_fraction(TierPlan(interval_s, 1), costs, rates) == pytest.approx(
        expected_waste_fraction(interval_s, costs.durable_ckpt_s, mtbf_s, costs.restart_s),
        rel=1e-9,
    )


def test_analytic_optimum_within_5_percent_of_the_numeric_minimum() -> None:
    """The acceptance mix. Benoit et al.'s k* = sqrt(118/2 x 12) = 26.6 by hand."""
    assert continuous_durable_every(MIX_COSTS, MIX_RATES) == pytest.approx(math.sqrt(708.0))
    analytic = analytic_plan(MIX_COSTS, MIX_RATES)
    numeric = numeric_plan(MIX_COSTS, MIX_RATES)
    assert analytic.plan.tiers == numeric.plan.tiers == 2
    assert analytic.plan.memory_interval_s == pytest.approx(
        numeric.plan.memory_interval_s, rel=0.05
    )
    assert analytic.plan.durable_interval_s == pytest.approx(
        numeric.plan.durable_interval_s, rel=0.05
    )
    assert analytic.waste_fraction == pytest.approx(numeric.waste_fraction, rel=0.001)
    assert numeric.waste_fraction <= analytic.waste_fraction
    # Young's per level, by hand: sqrt(2 C1 / lambda1) = 240 s; sqrt(2 (C2 - C1) / lambda2).
    assert analytic.plan.memory_interval_s == pytest.approx(240.0, rel=0.05)
    assert analytic.plan.durable_interval_s == pytest.approx(math.sqrt(2 * 118 * 48 * HOUR), 0.05)
    # The exact model says two tiers waste about half of one tier's: 0.526 with restarts.
    one = one_tier_plan(MIX_COSTS, MIX_RATES)
    assert one.plan.memory_interval_s == pytest.approx(daly_interval_s(120.0, 1 / (13 / 48 / HOUR)))
    assert analytic.waste_fraction / one.waste_fraction == pytest.approx(0.526, abs=0.005)


def test_first_order_model_separates_by_level() -> None:
    """sqrt(2 lambda1 C1) + sqrt(2 lambda2 (C2 - C1)) + lambda R at each level's optimum."""
    k = 27
    plan = TierPlan(math.sqrt(2 * (2.0 + 118.0 / k) / (MIX_RATES.memory_per_s + k / 48 / HOUR)), k)
    overhead = math.sqrt(2 * MIX_RATES.memory_per_s * 2.0) + math.sqrt(
        2 * MIX_RATES.machine_per_s * 118.0
    )
    restarts = MIX_RATES.total_per_s * 600.0
    assert first_order_waste_fraction(plan, MIX_COSTS, MIX_RATES) == pytest.approx(
        overhead + restarts, rel=1e-3
    )


costs_and_rates = st.tuples(
    st.floats(min_value=0.1, max_value=20.0),  # C1
    st.floats(min_value=1.0, max_value=300.0),  # C2 / C1
    st.floats(min_value=0.0, max_value=1200.0),  # R
    st.floats(min_value=0.5, max_value=48.0),  # process MTBF, h
    st.floats(min_value=1.0, max_value=100.0),  # machine MTBF / process MTBF
)


def _build(values: tuple[float, float, float, float, float]) -> tuple[TierCosts, TierRates]:
    memory_s, durable_ratio, restart_s, process_h, machine_ratio = values
    costs = TierCosts(memory_s, memory_s * durable_ratio, restart_s)
    return costs, TierRates.from_mtbf(process_h * HOUR, process_h * machine_ratio * HOUR)


@settings(max_examples=40, deadline=None)
@given(values=costs_and_rates, factor=st.floats(min_value=1.1, max_value=4.0))
def test_waste_is_positive_and_the_numeric_plan_a_minimum(
    values: tuple[float, float, float, float, float], factor: float
) -> None:
    costs, rates = _build(values)
    best = numeric_plan(costs, rates)
    assert best.waste_fraction > 0
    tau_s, k = best.plan.memory_interval_s, best.plan.durable_every
    neighbours = [TierPlan(tau_s * factor, k), TierPlan(tau_s / factor, k), TierPlan(tau_s, k + 1)]
    if k > 1:
        neighbours.append(TierPlan(tau_s, k - 1))
    for plan in neighbours:
        waste = pattern_waste_fraction(plan, costs, rates)
        assert waste > 0
        assert best.waste_fraction <= waste * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(values=costs_and_rates)
def test_analytic_waste_is_near_the_least(values: tuple[float, float, float, float, float]) -> None:
    """Never below the numeric minimum; where C2 is small against the combined MTBF
    (C2 / M < 5%), within 2% of it."""
    costs, rates = _build(values)
    analytic, numeric = analytic_plan(costs, rates), numeric_plan(costs, rates)
    assert numeric.waste_fraction <= analytic.waste_fraction * (1 + 1e-9)
    if costs.durable_ckpt_s * rates.total_per_s < 0.05:
        assert analytic.waste_fraction == pytest.approx(numeric.waste_fraction, rel=0.02)


@settings(max_examples=40, deadline=None)
@given(
    durable_s=st.floats(min_value=1.0, max_value=600.0),
    memory_ratio=st.floats(min_value=0.001, max_value=1.0),
    machine_h=st.floats(min_value=1.0, max_value=1000.0),
    restart_s=st.floats(min_value=0.0, max_value=1200.0),
)
def test_no_process_failures_is_one_tier_at_dalys_interval(
    durable_s: float, memory_ratio: float, machine_h: float, restart_s: float
) -> None:
    costs = TierCosts(memory_ratio * durable_s, durable_s, restart_s)
    rates = TierRates(0.0, 1.0 / (machine_h * HOUR))
    analytic = analytic_plan(costs, rates)
    assert analytic.plan.durable_every == 1
    assert analytic.plan.memory_interval_s == pytest.approx(
        daly_interval_s(durable_s, machine_h * HOUR), rel=1e-12
    )
    assert analytic.plan == one_tier_plan(costs, rates).plan
    numeric = numeric_plan(costs, rates)
    assert numeric.plan.durable_every == 1
    assert numeric.plan.memory_interval_s == pytest.approx(analytic.plan.memory_interval_s, 0.01)


def test_a_memory_save_no_cheaper_than_a_durable_one_is_one_tier() -> None:
    costs = TierCosts(120.0, 120.0, 600.0)
    assert analytic_plan(costs, MIX_RATES).plan.durable_every == 1
    assert numeric_plan(costs, MIX_RATES).plan.durable_every == 1


def test_golden_minimum_and_validation() -> None:
    assert golden_minimum(lambda x: (math.log(x) - 2.0) ** 2, 1e-3, 1e3) == pytest.approx(
        math.e**2, rel=1e-6
    )
    with pytest.raises(ValueError, match="durable_every"):
        TierPlan(10.0, 0)
    with pytest.raises(ValueError, match="memory_ckpt_s"):
        TierCosts(0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="machine_per_s"):
        TierRates(1.0, 0.0)
    assert pattern_waste_fraction(TierPlan(1e6, 1), MIX_COSTS, TierRates(0.0, 1.0)) == math.inf


# --- learning the rates ---------------------------------------------------------------


def test_no_history_gives_the_priors() -> None:
    estimate = TierRateEstimator(prior_memory_mtbf_s=10 * HOUR, prior_machine_mtbf_s=100 * HOUR)
    rates = estimate.estimate().rates
    assert 1 / rates.memory_per_s == pytest.approx(10 * HOUR)
    assert 1 / rates.machine_per_s == pytest.approx(100 * HOUR)


def test_each_failure_goes_to_the_tier_that_recovered_it() -> None:
    records = [
        TierFailureRecord(HOUR, ExitKind.OOM, memory_intact=True),
        TierFailureRecord(HOUR, ExitKind.OOM, memory_intact=False),  # found lost: durable only
        TierFailureRecord(HOUR, ExitKind.INFRA, machine_survived=False),
        TierFailureRecord(HOUR, ExitKind.HANG, machine_survived=True),
        TierFailureRecord(HOUR, ExitKind.USER_ERROR),  # not the machine's
        TierFailureRecord(HOUR, ExitKind.COMPLETED),
        TierFailureRecord(HOUR),  # still running
    ]
    estimate = TierRateEstimator().observe_all(records).estimate()
    assert estimate.memory_failures == pytest.approx(2.0)
    assert estimate.machine_failures == pytest.approx(2.0)
    assert estimate.exposure_s == pytest.approx(7 * HOUR)
    prior_failures, prior_memory_s, prior_machine_s = 1.0, 86400.0, 7 * 86400.0
    assert estimate.rates.memory_per_s == pytest.approx(3.0 / (prior_memory_s + 7 * HOUR))
    assert estimate.rates.machine_per_s == pytest.approx(
        (prior_failures + 2.0) / (prior_machine_s + 7 * HOUR)
    )


def test_which_kinds_find_the_memory_tier_intact_is_learned() -> None:
    """INFRA starts at 0.7; here every relaunch after one found the tier gone (say, Xid
    errors that needed a reset), so a later INFRA of unknown outcome counts as durable."""
    estimator = TierRateEstimator(prior_weight_relaunches=2.0)
    assert estimator.memory_intact_chance(ExitKind.INFRA) == pytest.approx(0.7)
    for _ in range(18):
        estimator.observe(TierFailureRecord(HOUR, ExitKind.INFRA, memory_intact=False))
    assert estimator.memory_intact_chance(ExitKind.INFRA) == pytest.approx(1.4 / 20)
    before = estimator.estimate()
    estimator.observe(TierFailureRecord(HOUR, ExitKind.INFRA))
    after = estimator.estimate()
    assert after.memory_failures - before.memory_failures == pytest.approx(1.4 / 20)
    assert after.machine_failures - before.machine_failures == pytest.approx(18.6 / 20)
    assert after.memory_intact_by_kind[ExitKind.INFRA] == pytest.approx(0.07)
    assert estimator.memory_intact_chance(ExitKind.PREEMPTED) == pytest.approx(0.1)


def test_learned_rates_approach_the_truth() -> None:
    """A failure history drawn by hand: per 48 h, 12 process failures and one machine loss."""
    records = []
    for _ in range(40):
        records += [TierFailureRecord(4 * HOUR - 1, ExitKind.OOM, machine_survived=True)] * 11
        records.append(TierFailureRecord(4 * HOUR + 11, ExitKind.PREEMPTED))
    rates = TierRateEstimator().observe_all(records).estimate().rates
    # PREEMPTED of unknown outcome counts 0.1 memory, 0.9 machine (the prior per kind).
    assert 1 / rates.memory_per_s == pytest.approx(48 * HOUR / 11.1, rel=0.02)
    # The prior (one loss in 7 days) still weighs: 37 losses in 87 days of evidence.
    assert rates.machine_per_s == pytest.approx((1 + 36.0) / (7 * 86400 + 40 * 48 * HOUR))
    assert 1 / rates.machine_per_s == pytest.approx(48 * HOUR / 0.9, rel=0.06)


def test_half_life_forgets_old_failures() -> None:
    estimator = TierRateEstimator(half_life_s=10 * HOUR)
    estimator.observe(TierFailureRecord(HOUR, ExitKind.OOM, machine_survived=True))
    estimator.observe(TierFailureRecord(10 * HOUR))
    assert estimator.estimate().memory_failures == pytest.approx(0.5)
    with pytest.raises(ValueError, match="exposure_s"):
        estimator.observe(TierFailureRecord(-1.0))


# --- the simulator --------------------------------------------------------------------


def test_accounting_by_hand() -> None:
    """tau1 10 s, every 2nd save durable (C1 1 s, C2 4 s), R 3 s, 35 s of work. A process
    failure at 30 s (in the third segment, begun at 25 s) loses 5 s, back to the durable
    save at 20 s; a machine loss at 47 s (in the last segment, begun at 44 s) loses 3 s and
    the memory save at 30 s of work, back to 20 s again; done at 66 s."""
    scenario = TwoTierScenario(TierCosts(1.0, 4.0, 3.0), 10.0, 10.0, 35.0, runs=1)
    times = Draws(iter([30.0, 47.0, 1e9, 2e9]))
    kinds = Draws(iter([0.9, 0.1, 0.9, 0.9]))  # the machine share is 0.5
    run = simulate_plan_run(TierPlan(10.0, 2), times, kinds, scenario)
    assert (run.lost_s, run.checkpoint_s, run.restart_s) == (18.0, 7.0, 6.0)
    assert (run.failures, run.machine_losses, run.saves, run.durable_saves) == (2, 1, 4, 1)
    assert run.total_s == 66.0 - 35.0
    assert run.finished


def test_simulation_agrees_with_the_exact_model() -> None:
    scenario = mix_scenario(runs=300)
    plans = [one_tier_plan(MIX_COSTS, MIX_RATES), analytic_plan(MIX_COSTS, MIX_RATES)]
    results = simulate_plans(scenario, [(p.method, p.plan) for p in plans])
    for optimum, result in zip(plans, results, strict=True):
        mean, error = waste_fraction(result, scenario.work_s)
        assert error < 0.01 * mean
        assert mean == pytest.approx(optimum.waste_fraction, abs=max(3 * error, 0.002))
    assert simulate_plans(scenario, [("x", plans[1].plan)]) == simulate_plans(
        scenario, [("x", plans[1].plan)]
    )


def test_two_tiers_halve_the_waste_a_plan_controls() -> None:
    """Acceptance: two tiers' lost work + save time is under half of one tier's (0.39).
    With the restarts, which every failure costs both the same, it is 0.53 (the exact
    model's 0.526): the memory tier cannot make a relaunch cheaper."""
    scenario = mix_scenario(runs=300)
    one, two = simulate_plans(
        scenario,
        [
            ("one", one_tier_plan(MIX_COSTS, MIX_RATES).plan),
            ("two", analytic_plan(MIX_COSTS, MIX_RATES).plan),
        ],
    )
    controlled, error = paired_ratio(two, one, lost_and_checkpoint)
    assert controlled + 3 * error <= 0.5
    ratio, error = paired_ratio(two, one)
    assert ratio == pytest.approx(0.526, abs=max(3 * error, 0.01))


def test_analytic_optimum_within_5_percent_of_the_simulated_one() -> None:
    """Acceptance: the intervals the simulation alone locates (1,000 runs of 168 h)."""
    comparison = compare(mix_scenario(runs=1000))
    one, two = comparison.one, comparison.two
    assert one.optimum.memory_interval_s is not None
    assert two.optimum.memory_interval_s is not None
    assert two.optimum.durable_interval_s is not None
    assert one.analytic.plan.memory_interval_s == pytest.approx(
        one.optimum.memory_interval_s, rel=0.05
    )
    assert two.analytic.plan.memory_interval_s == pytest.approx(
        two.optimum.memory_interval_s, rel=0.05
    )
    assert two.analytic.plan.durable_interval_s == pytest.approx(
        two.optimum.durable_interval_s, rel=0.05
    )
    for row in (one, two):
        analytic, _ = waste_fraction(row.simulated, comparison.scenario.work_s)
        best, _ = waste_fraction(row.optimum.best, comparison.scenario.work_s)
        assert analytic == pytest.approx(best, rel=0.05)


# --- the command line -----------------------------------------------------------------


def test_command_line_prints_one_tier_against_two(capsys: pytest.CaptureFixture[str]) -> None:
    argv = "--tiers 2 --process-mtbf-h 4 --machine-mtbf-h 48 --memory-cost-s 2 --runs 20"
    assert main(argv.split()) == 0
    out = capsys.readouterr().out
    assert "C1 = 2 s to memory, C2 = 120 s durable, R = 600 s; work 168 h; 20 runs" in out
    assert "analytic (Benoit)         3.9 min   105.0 min (k 27)         10.54%" in out
    assert "analytic (Daly)                 -           28.4 min         20.03%" in out
    assert "two tiers / one tier, simulated at the analytic plans: waste" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--tiers 2 --process-mtbf-h 4 --machine-mtbf-h 48", "--tiers 2 needs --memory-cost-s"),
        (
            "--tiers 2 --process-mtbf-h 4 --machine-mtbf-h 48 --memory-cost-s 2 --nodes 8",
            "--nodes does not apply to --tiers 2",
        ),
        ("--memory-cost-s 2", "--memory-cost-s needs --tiers 2"),
    ],
)
def test_command_line_misuse(argv: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv.split())
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
