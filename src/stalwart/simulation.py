"""The simulation engine: checkpoint-interval strategies replayed against failure processes.

A job needs `work_s` of compute. A strategy picks the compute time before each
save; a save costs C (stall = persist: synchronous); a failure loses everything
since the last completed save, then a restart costs R; failures strike in wall
time during compute, saves and restarts alike (Daly's model). Waste is wall time
minus work: lost work + save time + restart time.

Strategies: `Adaptive` learns online with exactly `stalwart.interval.IntervalModel`
(fed each save's cost, and the wall time since the previous failure as the run
time each failure ended, as the journal's attempts would); `Fixed` intervals; the
`Oracle`, Daly's optimum for the true mean save cost and the true current MTBF.
All strategies of one run see the same failure times and save costs (common
random numbers), so their differences are not noise from different draws.
Seeded and deterministic.

Cluster scaling (`scale`): N nodes failing independently, any one interrupting
the job, fail together at N times a node's rate. For one cluster size, Daly's
interval and the expected waste at it and at fixed intervals (Daly's exact
model), and the same simulated where the runs are cheap enough, with the fixed
interval of least simulated waste located by `fitted_minimum_s`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from stalwart.failure_models import ClusterFailures, FailureProcess, cluster_mtbf_s
from stalwart.interval import (
    IntervalConfig,
    IntervalModel,
    daly_interval_s,
    expected_waste_fraction,
)
from stalwart.types import ExitKind

# --- strategies -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What a strategy may know about the run it plans (the oracle reads all of it)."""

    process: FailureProcess
    ckpt_s: float
    """The true mean save cost."""


class Planner(abc.ABC):
    """One strategy during one run."""

    static: bool = False
    """The interval depends on nothing (lets the simulator skip ahead)."""

    @abc.abstractmethod
    def interval_s(self, now_s: float) -> float:
        """Compute time before the next save, decided at wall time `now_s`."""

    def on_save(self, now_s: float, ckpt_s: float) -> None:  # noqa: B027 (optional hook)
        """A save of cost `ckpt_s` completed at `now_s`."""

    def on_failure(self, now_s: float) -> None:  # noqa: B027 (optional hook)
        """A failure struck at `now_s`."""

    def on_restart(self, restart_s: float) -> None:  # noqa: B027 (optional hook)
        """A restart completed, having taken `restart_s`."""


class Strategy(abc.ABC):
    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The row label."""

    @abc.abstractmethod
    def planner(self, context: RunContext) -> Planner:
        """A fresh planner for one run."""


class _FixedPlanner(Planner):
    static = True

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s

    def interval_s(self, now_s: float) -> float:
        return self._interval_s


@dataclass(frozen=True)
class Fixed(Strategy):
    interval_s: float

    @property
    def name(self) -> str:
        minutes = self.interval_s / 60
        return f"fixed {minutes:g} min" if minutes >= 1 else f"fixed {self.interval_s:g} s"

    def planner(self, context: RunContext) -> Planner:
        return _FixedPlanner(self.interval_s)


class _OraclePlanner(Planner):
    def __init__(self, context: RunContext) -> None:
        self._context = context
        self.static = context.process.constant

    def interval_s(self, now_s: float) -> float:
        return daly_interval_s(self._context.ckpt_s, self._context.process.mtbf_at_s(now_s))


@dataclass(frozen=True)
class Oracle(Strategy):
    """Daly's optimum from the true mean save cost and the true MTBF at each moment."""

    @property
    def name(self) -> str:
        return "oracle"

    def planner(self, context: RunContext) -> Planner:
        return _OraclePlanner(context)


class AdaptivePlanner(Planner):
    def __init__(self, config: IntervalConfig) -> None:
        self._model = IntervalModel(config)
        self._since_s = 0.0
        """Wall time of the last failure: the run time after it is not yet recorded."""

    @property
    def model(self) -> IntervalModel:
        return self._model

    def interval_s(self, now_s: float) -> float:
        return self._model.decide(running_exposure_s=now_s - self._since_s).interval_s

    def on_save(self, now_s: float, ckpt_s: float) -> None:
        self._model.observe_save(stall_s=ckpt_s, persist_s=ckpt_s)

    def on_failure(self, now_s: float) -> None:
        self._model.observe_run(now_s - self._since_s, (ExitKind.INFRA,))
        self._since_s = now_s

    def on_restart(self, restart_s: float) -> None:
        self._model.observe_restart(restart_s)


@dataclass(frozen=True)
class Adaptive(Strategy):
    """stalwart: `IntervalModel` learning online from what it sees, from its prior."""

    config: IntervalConfig = field(default_factory=IntervalConfig)
    label: str = "stalwart adaptive"

    @property
    def name(self) -> str:
        return self.label

    def planner(self, context: RunContext) -> AdaptivePlanner:
        return AdaptivePlanner(self.config)


# --- the simulation -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    process: FailureProcess
    ckpt_s: float
    """Mean save cost C."""
    restart_s: float
    """Restart cost R (relaunch + restore)."""
    work_s: float
    """Compute the job needs."""
    runs: int = 100
    seed: int = 0
    ckpt_jitter: float = 0.0
    """Sigma of a log-normal factor (mean 1) on each save's cost; 0: every save costs C."""
    max_wall_factor: float = 100.0
    """A run still unfinished after this many times `work_s` of wall time is cut off there."""


@dataclass(frozen=True)
class RunWaste:
    lost_s: float
    checkpoint_s: float
    restart_s: float
    failures: int
    saves: int
    mean_interval_s: float
    """Mean compute time between saves over the segments the strategy planned."""
    finished: bool = True
    """False when cut off at `max_wall_factor`: the waste is then a lower bound."""

    @property
    def total_s(self) -> float:
        return self.lost_s + self.checkpoint_s + self.restart_s

    @property
    def lost_and_checkpoint_s(self) -> float:
        """The part a strategy controls: restarts cost the same per failure for all."""
        return self.lost_s + self.checkpoint_s


class Draws:
    """An endless sequence drawn on demand and kept, so every strategy sees the same."""

    def __init__(self, source: Iterator[float]) -> None:
        self._source = source
        self._values: list[float] = []

    def __getitem__(self, index: int) -> float:
        while len(self._values) <= index:
            self._values.append(next(self._source))
        return self._values[index]


class Repeat(Draws):
    """The same value at every index."""

    def __init__(self, value: float) -> None:
        self._value = value

    def __getitem__(self, index: int) -> float:
        return self._value


def _costs(rng: random.Random, ckpt_s: float, jitter: float) -> Iterator[float]:
    while True:
        yield ckpt_s * math.exp(jitter * rng.gauss(0.0, 1.0) - jitter * jitter / 2.0)


def simulate_run(planner: Planner, failures: Draws, costs: Draws, scenario: Scenario) -> RunWaste:
    """One job under one strategy. Failure and cost sequences are shared across strategies."""
    now_s, work_left_s = 0.0, scenario.work_s
    lost_s = checkpoint_s = restart_total_s = interval_sum_s = 0.0
    failure_index, failure_count, saves, segments = 0, 0, 0, 0
    next_failure_s = failures[0]
    wall_limit_s, finished = scenario.max_wall_factor * scenario.work_s, True
    while True:
        interval_s = planner.interval_s(now_s)
        segments += 1
        interval_sum_s += interval_s
        if planner.static and isinstance(costs, Repeat) and work_left_s > interval_s:
            # Skip whole (compute + save) periods that end before the next failure.
            period_s = interval_s + costs[0]
            fit = math.floor((next_failure_s - now_s) / period_s)
            before_last = math.ceil(work_left_s / interval_s) - 1
            skip = max(0, min(fit, before_last))
            now_s += skip * period_s
            work_left_s -= skip * interval_s
            checkpoint_s += skip * costs[0]
            saves += skip
        segment_s = min(interval_s, work_left_s)
        final = segment_s >= work_left_s
        cost_s = 0.0 if final else costs[saves]
        end_s = now_s + segment_s + cost_s
        if next_failure_s >= end_s:
            now_s, work_left_s = end_s, work_left_s - segment_s
            if final:
                break
            checkpoint_s += cost_s
            saves += 1
            planner.on_save(now_s, cost_s)
            continue
        lost_s += next_failure_s - now_s
        now_s = next_failure_s
        while True:  # fail, then restart; a failure during the restart starts it over
            failure_count += 1
            planner.on_failure(now_s)
            failure_index += 1
            next_failure_s = failures[failure_index]
            if next_failure_s >= now_s + scenario.restart_s or now_s > wall_limit_s:
                break
            restart_total_s += next_failure_s - now_s
            now_s = next_failure_s
        if now_s > wall_limit_s:
            finished = False
            break
        restart_total_s += scenario.restart_s
        now_s += scenario.restart_s
        planner.on_restart(scenario.restart_s)
    return RunWaste(
        lost_s=lost_s,
        checkpoint_s=checkpoint_s,
        restart_s=restart_total_s,
        failures=failure_count,
        saves=saves,
        mean_interval_s=interval_sum_s / segments,
        finished=finished,
    )


@dataclass(frozen=True)
class StrategyResult:
    name: str
    runs: tuple[RunWaste, ...]

    def mean(self, measure: Callable[[RunWaste], float]) -> float:
        return sum(measure(run) for run in self.runs) / len(self.runs)


def total(run: RunWaste) -> float:
    return run.total_s


def lost_and_checkpoint(run: RunWaste) -> float:
    return run.lost_and_checkpoint_s


@dataclass(frozen=True)
class SimulationResult:
    scenario: Scenario
    strategies: tuple[StrategyResult, ...]

    def get(self, name: str) -> StrategyResult:
        for result in self.strategies:
            if result.name == name:
                return result
        raise KeyError(name)

    def ratio(
        self, name: str, baseline: str = "oracle", measure: Callable[[RunWaste], float] = total
    ) -> tuple[float, float]:
        """Mean waste of `name` over that of `baseline`, and its standard error (paired runs)."""
        runs = self.get(name).runs
        base = self.get(baseline).runs
        mean_base = sum(measure(run) for run in base) / len(base)
        if mean_base == 0:
            return (math.nan, math.nan)
        ratio = sum(measure(run) for run in runs) / len(runs) / mean_base
        if len(runs) < 2:
            return ratio, math.nan
        residuals = [measure(a) - ratio * measure(b) for a, b in zip(runs, base, strict=True)]
        spread = math.sqrt(sum(r * r for r in residuals) / (len(runs) - 1))
        return ratio, spread / math.sqrt(len(runs)) / mean_base


def simulate(scenario: Scenario, strategies: Sequence[Strategy]) -> SimulationResult:
    """Every strategy over `scenario.runs` runs, each run's randomness shared by all."""
    if scenario.runs < 1:
        raise ValueError("runs must be >= 1")
    context = RunContext(scenario.process, scenario.ckpt_s)
    per_strategy: list[list[RunWaste]] = [[] for _ in strategies]
    for run in range(scenario.runs):
        failures = Draws(scenario.process.times(random.Random(f"{scenario.seed}:{run}:failures")))
        costs: Draws = Repeat(scenario.ckpt_s)
        if scenario.ckpt_jitter > 0:
            cost_rng = random.Random(f"{scenario.seed}:{run}:costs")
            costs = Draws(_costs(cost_rng, scenario.ckpt_s, scenario.ckpt_jitter))
        for strategy, results in zip(strategies, per_strategy, strict=True):
            planner = strategy.planner(context)
            results.append(simulate_run(planner, failures, costs, scenario))
    return SimulationResult(
        scenario,
        tuple(
            StrategyResult(strategy.name, tuple(results))
            for strategy, results in zip(strategies, per_strategy, strict=True)
        ),
    )


def default_strategies(
    fixed_min: Sequence[float] = (5, 15, 30, 60, 120), config: IntervalConfig | None = None
) -> list[Strategy]:
    strategies: list[Strategy] = [Oracle(), Adaptive(config or IntervalConfig())]
    strategies += [Fixed(minutes * 60.0) for minutes in fixed_min]
    return strategies


# --- cluster scaling ------------------------------------------------------------------

SEARCH_FACTORS = tuple(2.0 ** (k / 4) for k in range(-4, 5))
"""Fixed intervals simulated around Daly's, as multiples of it, to locate the least waste."""


@dataclass(frozen=True)
class WasteEstimate:
    """Simulated waste per unit of work: the mean over runs and its standard error."""

    fraction: float
    stderr: float

    @classmethod
    def of(cls, result: StrategyResult, work_s: float) -> WasteEstimate:
        count, mean_s = len(result.runs), result.mean(total)
        if count < 2:
            return cls(mean_s / work_s, math.nan)
        variance = sum((run.total_s - mean_s) ** 2 for run in result.runs) / (count - 1)
        return cls(mean_s / work_s, math.sqrt(variance / count) / work_s)


def _vertex(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Where the least-squares parabola through the points is lowest; None if it opens down."""
    # y = a + b x + c x^2: the normal equations (positive definite), by elimination.
    rows = [
        [sum(x ** (i + j) for x in xs) for j in range(3)]
        + [sum(y * x**i for x, y in zip(xs, ys, strict=True))]
        for i in range(3)
    ]
    for i in range(3):
        for k in range(i + 1, 3):
            factor = rows[k][i] / rows[i][i]
            rows[k] = [a - factor * b for a, b in zip(rows[k], rows[i], strict=True)]
    c = rows[2][3] / rows[2][2]
    b = (rows[1][3] - rows[1][2] * c) / rows[1][1]
    return -b / (2.0 * c) if c > 0 else None


def fitted_minimum_s(
    intervals_s: Sequence[float], waste: Sequence[float], window: int = 2
) -> float | None:
    """The interval of least `waste`, refined by a least-squares parabola in log(interval)
    through the lowest point and up to `window` neighbours on each side.

    `intervals_s` increasing. None when the lowest point is at either end (the minimum
    is not bracketed), or the parabola's lowest point falls outside the points it used.
    """
    if len(intervals_s) != len(waste) or len(intervals_s) < 3:
        raise ValueError("need at least three intervals, each with its waste")
    lowest = min(range(len(waste)), key=waste.__getitem__)
    if lowest in (0, len(waste) - 1):
        return None
    used = range(max(0, lowest - window), min(len(waste), lowest + window + 1))
    centre = math.log(intervals_s[lowest])
    xs = [math.log(intervals_s[i]) - centre for i in used]
    vertex = _vertex(xs, [waste[i] for i in used])
    if vertex is None or not xs[0] <= vertex <= xs[-1]:
        return None
    return math.exp(centre + vertex)


@dataclass(frozen=True)
class ClusterStudy:
    """What `scale` computes each cluster size from."""

    node_mtbf_s: float
    """Each node's mean time between failures; the cluster's is this / nodes."""
    ckpt_s: float
    """Save cost C (the whole job stalls for it)."""
    restart_s: float
    """Restart cost R."""
    work_s: float
    """Compute one simulated run needs."""
    fixed_s: tuple[float, ...] = (1800.0,)
    """Fixed intervals to contrast with Daly's."""
    runs: int = 200
    seed: int = 0
    ckpt_jitter: float = 0.0
    max_events: float = 1e6
    """Simulate a cluster size only if its runs step through at most this many failures
    (and saves, with jitter) in all: a few microseconds each."""
    min_failures_to_fit: float = 2000.0
    """Locate the least simulated waste only where each interval's runs see this many
    failures in all (fewer leave the minimum in the noise)."""


@dataclass(frozen=True)
class ClusterSize:
    """Daly's interval and the waste per unit of work, for one cluster size."""

    nodes: int
    mtbf_s: float
    """The cluster's MTBF: node MTBF / nodes."""
    daly_s: float
    """Daly's optimal interval for C and the cluster's MTBF."""
    waste: float
    """Expected waste at `daly_s` (Daly's exact model, restarts included)."""
    fixed_waste: tuple[float, ...]
    """Expected waste at each of the study's fixed intervals."""
    simulated: WasteEstimate | None = None
    """Simulated waste at `daly_s`; None where not simulated (too many failures)."""
    simulated_fixed: tuple[WasteEstimate, ...] = ()
    best_simulated_s: float | None = None
    """The fixed interval of least simulated waste, from `SEARCH_FACTORS` x `daly_s`."""


def scale(study: ClusterStudy, nodes: int) -> ClusterSize:
    """Daly's interval and the waste on `nodes` nodes: analytic, and simulated if cheap."""
    mtbf_s = cluster_mtbf_s(study.node_mtbf_s, nodes)
    daly_s = daly_interval_s(study.ckpt_s, mtbf_s)
    search_s = [daly_s * factor for factor in SEARCH_FACTORS]
    intervals_s = [daly_s, *study.fixed_s, *search_s]
    expected = [
        expected_waste_fraction(interval_s, study.ckpt_s, mtbf_s, study.restart_s)
        for interval_s in intervals_s
    ]
    size = ClusterSize(
        nodes, mtbf_s, daly_s, expected[0], tuple(expected[1 : 1 + len(study.fixed_s)])
    )
    scenario = Scenario(
        ClusterFailures(study.node_mtbf_s, nodes),
        study.ckpt_s,
        study.restart_s,
        study.work_s,
        study.runs,
        study.seed,
        study.ckpt_jitter,
    )
    events = 0.0
    for interval_s, waste in zip(intervals_s, expected, strict=True):
        wall_s = study.work_s * min(1.0 + waste, scenario.max_wall_factor)
        saves = wall_s / interval_s if study.ckpt_jitter > 0 else 0.0
        events += study.runs * (wall_s / mtbf_s + saves)
    if not events <= study.max_events:
        return size
    result = simulate(scenario, [Fixed(interval_s) for interval_s in intervals_s])
    estimates = [WasteEstimate.of(strategy, study.work_s) for strategy in result.strategies]
    first_search = 1 + len(study.fixed_s)
    best_s = None
    if study.runs * study.work_s / mtbf_s >= study.min_failures_to_fit:
        best_s = fitted_minimum_s(search_s, [e.fraction for e in estimates[first_search:]])
    return dataclasses.replace(
        size,
        simulated=estimates[0],
        simulated_fixed=tuple(estimates[1:first_search]),
        best_simulated_s=best_s,
    )
