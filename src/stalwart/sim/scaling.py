"""Cluster scaling: how the checkpoint interval and the waste change with cluster size.

N nodes failing independently, any one interrupting the job, fail together at N
times a node's rate, so the cluster MTBF is node MTBF / N: Daly's interval shrinks
as 1/sqrt(N) and the waste grows as sqrt(N) (while C << MTBF). For one cluster
size, `scale` gives Daly's interval and the expected waste at it and at fixed
intervals (Daly's exact model), and the same simulated with `stalwart.sim.engine`
where the runs are cheap enough, with the fixed interval of least simulated waste
located by `fitted_minimum_s`. `node_sweep` picks the sizes around one N.

`PRESETS` are built-in clusters for `stalwart simulate --scenario`: a published
failure rate (`stalwart.sim.failure_models`) and an assumed save cost.
`format_cluster_table` and `describe_preset` render the cluster view as text; the
command line that reads the options and prints them is `stalwart.cli.simulate`.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from stalwart.policy.interval import daly_interval_s, expected_waste_fraction
from stalwart.sim.engine import Fixed, Scenario, StrategyResult, simulate, total
from stalwart.sim.failure_models import (
    LLAMA3_405B,
    ClusterFailures,
    PublishedInterruptions,
    cluster_mtbf_s,
)

HOUR_S = 3600.0
WIDTH = 100
"""Where the cluster table's prose wraps."""

# --- one cluster size -----------------------------------------------------------------

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


def node_sweep(nodes: int) -> list[int]:
    """Seven cluster sizes, N x 4^k (rounded), from the lowest that stays >= 1 (at most
    N / 4^5) to 4N: the interval halves, and the waste doubles, from one to the next."""
    low = -min(5, math.floor(math.log(nodes, 4) + 1e-9))
    return sorted({max(1, round(nodes * 4.0**k)) for k in range(low, low + 7)})


# --- built-in clusters ---------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A built-in cluster for --scenario: a published failure rate and an assumed save cost."""

    title: str
    failures: PublishedInterruptions
    ckpt_s: float
    ckpt_basis: str
    """Why this save cost."""


PRESETS = {
    "llama3": Preset(
        title="Llama 3 405B pre-training",
        failures=LLAMA3_405B,
        ckpt_s=30.0,
        ckpt_basis="assumed: the report gives no save time; 16,384 GPUs x at most 4 GB of "
        "state each at the storage's 2 TB/s sustained write is <= 33 s",
    )
}

# --- the cluster view as text --------------------------------------------------------


def _duration(value_s: float) -> str:
    hours = value_s / HOUR_S
    if hours >= 100:
        return f"{hours:,.0f} h"
    if hours >= 2:
        return f"{hours:.3g} h"
    return f"{value_s / 60:.3g} min" if value_s >= 120 else f"{value_s:.3g} s"


def _percent(value: float) -> str:
    # Past 100x the work in wall time the simulator cuts a run off too.
    return f"{100 * value:.2f}%" if value < 99 else "no progress"


def _simulated(estimate: WasteEstimate | None) -> str:
    if estimate is None:
        return "-"
    return f"{100 * estimate.fraction:.2f}±{100 * estimate.stderr:.2f}%"


def format_cluster_table(
    study: ClusterStudy, sizes: Sequence[ClusterSize], marked: int | None = None
) -> str:
    """One row per cluster size: MTBF, Daly's interval, the waste at it and at fixed ones."""
    lines = textwrap.wrap(
        f"Nodes failing independently (Poisson), node MTBF {_duration(study.node_mtbf_s)}, "
        "any failure interrupting the job: cluster MTBF = node MTBF / nodes. "
        f"C = {study.ckpt_s:g} s, R = {study.restart_s:g} s. Waste = (lost work + saving + "
        "restarting) / work: analytic (Daly's exact model) and simulated "
        f"({study.runs} runs of {study.work_s / HOUR_S:g} h, seed {study.seed}; mean ± "
        "standard error).",
        width=WIDTH,
    )
    # Column headers: (label over the columns, their count), then one label per column.
    top = [("", 1), ("cluster", 1), ("failures", 1), ("Daly", 1), ("waste at Daly", 2)]
    top += [("best", 1)] + [(f"fixed {s / 60:g} min", 2) for s in study.fixed_s]
    bottom = ["nodes", "MTBF", "per day", "interval", "analytic", "simulated", "simulated"]
    bottom += ["analytic", "simulated"] * len(study.fixed_s)
    widths = [10, 10, 9, 10, 11, 13, 10] + [11, 13] * len(study.fixed_s)
    cells, column = [], 0
    for label, span in top:
        width = sum(widths[column : column + span]) + span - 1
        cells.append(label.center(width) if span > 1 else label.rjust(width))
        column += span
    rows = [bottom]
    for size in sizes:
        row = [
            f"{size.nodes:,}{'*' if size.nodes == marked else ' '}",
            _duration(size.mtbf_s),
            f"{86400 / size.mtbf_s:.3g}",
            _duration(size.daly_s),
            _percent(size.waste),
            _simulated(size.simulated),
            _duration(size.best_simulated_s) if size.best_simulated_s is not None else "-",
        ]
        simulated_fixed = size.simulated_fixed or (None,) * len(study.fixed_s)
        for waste, estimate in zip(size.fixed_waste, simulated_fixed, strict=True):
            row += [_percent(waste), _simulated(estimate)]
        rows.append(row)
    lines.append(" ".join(cells).rstrip())
    lines += [" ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    notes = [
        "best simulated: the fixed interval of least simulated waste (a parabola through "
        f"{len(SEARCH_FACTORS)} intervals, {SEARCH_FACTORS[0]:g}-{SEARCH_FACTORS[-1]:g}x Daly's)."
    ]
    if any(size.simulated is None for size in sizes):
        notes.append(
            f"simulated -: over {study.max_events:,.0f} failures to step through (lower --runs "
            "or --work-h)."
        )
    if any(size.simulated is not None and size.best_simulated_s is None for size in sizes):
        notes.append(
            f"best simulated -: under {study.min_failures_to_fit:,.0f} failures in the runs "
            "(raise --runs or --work-h), or the least waste at an end of the intervals tried."
        )
    for note in notes:
        lines += textwrap.wrap(note, width=WIDTH)
    return "\n".join(lines)


def describe_preset(
    name: str, preset: Preset, study: ClusterStudy, ckpt_given: bool, restart_given: bool
) -> str:
    """Where the scenario's figures come from, and Daly's interval at its own size."""
    failures = preset.failures
    mtbf_h, gpu_h = failures.cluster_mtbf_s / HOUR_S, failures.gpu_mtbf_s / HOUR_S
    daly_s = daly_interval_s(study.ckpt_s, failures.cluster_mtbf_s)
    waste = expected_waste_fraction(daly_s, study.ckpt_s, failures.cluster_mtbf_s, study.restart_s)
    ckpt = f"{study.ckpt_s:g} s" + (
        " (--ckpt-cost-s)" if ckpt_given else f", {preset.ckpt_basis} (override: --ckpt-cost-s)"
    )
    restart = f"{study.restart_s:g} s" + (
        " (--restart-cost-s)"
        if restart_given
        else ", assumed, not reported (override: --restart-cost-s)"
    )
    indent = " " * 16
    return "\n".join(
        [
            *textwrap.wrap(
                f"--scenario {name}: {preset.title}, as reported in {failures.source}: "
                f"{failures.interruptions} job interruptions in a {failures.days:g}-day "
                f"snapshot on {failures.gpus:,} GPUs ({failures.note}).",
                width=WIDTH,
            ),
            f"  cluster MTBF  {failures.days:g} d x 24 h / {failures.interruptions} = "
            f"{mtbf_h:.2f} h",
            f"  per GPU       {mtbf_h:.2f} h x {failures.gpus:,} GPUs = {gpu_h:,.0f} h",
            f"  per node      {gpu_h:,.0f} h / {failures.gpus_per_node} GPUs = "
            f"{failures.node_mtbf_s / HOUR_S:,.0f} h, {failures.nodes:,} nodes",
            *textwrap.wrap(
                ckpt,
                width=WIDTH,
                initial_indent=f"  {'C':<14}",
                subsequent_indent=indent,
            ),
            f"  {'R':<14}{restart}",
            *textwrap.wrap(
                f"At {failures.nodes:,} nodes: Daly interval {_duration(daly_s)}; expected waste "
                f"{_percent(waste)} of the work, i.e. {100 / (1 + waste):.1f}% effective "
                "training time (the report: over 90%).",
                width=WIDTH,
                initial_indent="  ",
                subsequent_indent="  ",
            ),
        ]
    )
