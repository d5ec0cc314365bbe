"""The simulation engine: checkpoint-interval strategies replayed against failure processes.

A job needs `work_s` of compute. A strategy picks the compute time before each
save; a save costs C (stall = persist: synchronous); a failure loses everything
since the last completed save, then a restart costs R; failures strike in wall
time during compute, saves and restarts alike (Daly's model). Waste is wall time
minus work: lost work + save time + restart time.

Strategies: `Adaptive` learns online with exactly `stalwart.policy.interval.IntervalModel`
(fed each save's cost, and the wall time since the previous failure as the run
time each failure ended, as the journal's attempts would); `Fixed` intervals; the
`Oracle`, Daly's optimum for the true mean save cost and the true current MTBF.
All strategies of one run see the same failure times and save costs (common
random numbers), so their differences are not noise from different draws.
Seeded and deterministic.

How the interval and the waste change with cluster size is `stalwart.sim.scaling`,
built on this engine.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from stalwart.policy.interval import IntervalConfig, IntervalModel, daly_interval_s
from stalwart.sim.failure_models import FailureProcess
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
