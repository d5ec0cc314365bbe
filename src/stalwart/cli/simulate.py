"""`stalwart simulate`: replay failures against checkpoint-interval strategies, print
the waste of each and its ratio to the oracle's, and optionally plot it.

With `--nodes` (and `--node-mtbf-h`) or `--scenario llama3` it prints instead how
the interval and the waste change with cluster size: N nodes failing independently,
any one interrupting the job, give a cluster MTBF of node MTBF / N, so Daly's
interval shrinks as 1/sqrt(N) and the waste grows as sqrt(N) (while C << MTBF).
Per cluster size: the cluster MTBF, Daly's interval, the waste at it and at fixed
intervals (Daly's exact model, and simulated where cheap), and the fixed interval
of least simulated waste. `--scenario llama3` takes the failure rate Meta reported
for Llama 3 405B pre-training and says where each figure comes from.

With `--tiers 2` (and `--process-mtbf-h`, `--machine-mtbf-h`, `--memory-cost-s`) it
compares one checkpoint tier with two (memory and durable) on a mix of process failures
and machine losses: the waste of each at its analytic optimum, the exact model's
numeric optimum and the optimum the simulation locates (`stalwart.sim.multilevel`).

The engine is `stalwart.sim.engine`; the failure processes `stalwart.sim.failure_models`;
the cluster-size study, its presets and its table `stalwart.sim.scaling`.
The plot needs matplotlib (the optional extra `stalwart[plot]`), imported only then.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from stalwart.policy.interval import IntervalConfig
from stalwart.policy.multilevel import TierCosts
from stalwart.sim.engine import (
    Scenario,
    SimulationResult,
    default_strategies,
    lost_and_checkpoint,
    simulate,
    total,
)
from stalwart.sim.failure_models import (
    DriftFailures,
    FailureProcess,
    PoissonFailures,
    TraceFailures,
    WeibullFailures,
    load_trace,
)
from stalwart.sim.multilevel import TwoTierScenario, compare, format_tier_table
from stalwart.sim.scaling import (
    PRESETS,
    ClusterStudy,
    describe_preset,
    format_cluster_table,
    node_sweep,
    scale,
)

# --- the command line -----------------------------------------------------------------

HOUR_S = 3600.0
DEFAULT_MTBF_H = 8.0
DEFAULT_CKPT_S = 120.0
DEFAULT_RESTART_S = 600.0
DEFAULT_RUNS = 200
TIER_RUNS = 2000
"""Runs with --tiers 2 unless --runs says: the two-tier optimum is flat, and fewer runs
leave its location in the noise."""
CLUSTER_FIXED_MIN = (30.0,)
"""The fixed interval the cluster table contrasts with Daly's unless --fixed-min says."""


def _minutes_list(text: str) -> list[float]:
    values = [float(part) for part in text.replace(",", " ").split()]
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {text!r}")
    return values


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _nonnegative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _node_counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected whole numbers of nodes >= 1, e.g. '64' or '1,8,64', got {text!r}"
        )
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stalwart simulate",
        description="Replay failures against checkpoint-interval strategies and compare "
        "their waste (lost work + save time + restart time) with the oracle's. With --nodes "
        "or --scenario: how the optimal interval and the waste change with cluster size.",
    )
    parser.add_argument(
        "--failures", choices=["poisson", "weibull", "drift", "trace"], default="poisson"
    )
    parser.add_argument(
        "--mtbf-h", type=_positive, help=f"mean time between failures (default {DEFAULT_MTBF_H:g})"
    )
    parser.add_argument("--shape", type=_positive, default=0.6, help="Weibull shape (< 1: bursty)")
    parser.add_argument(
        "--mtbf-after-h", type=_positive, help="drift: MTBF after the change (default MTBF / 8)"
    )
    parser.add_argument(
        "--change-at-h", type=_nonnegative, help="drift: wall time of the change (default work/2)"
    )
    parser.add_argument("--ramp-h", type=_nonnegative, default=0.0, help="drift: 0 is a step")
    parser.add_argument("--trace", type=Path, help="file of failure times, seconds, one per line")
    parser.add_argument(
        "--ckpt-cost-s",
        type=_positive,
        help=f"save cost C (default {DEFAULT_CKPT_S:g}; --scenario llama3: "
        f"{PRESETS['llama3'].ckpt_s:g})",
    )
    parser.add_argument(
        "--ckpt-jitter", type=_nonnegative, default=0.0, help="log-normal sigma on each save cost"
    )
    parser.add_argument(
        "--restart-cost-s", type=_nonnegative, help=f"restart R (default {DEFAULT_RESTART_S:g})"
    )
    parser.add_argument("--work-h", type=_positive, default=168.0, help="compute the job needs")
    parser.add_argument(
        "--runs", type=int, help=f"default {DEFAULT_RUNS}; with --tiers 2: {TIER_RUNS}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fixed-min",
        type=_minutes_list,
        action="extend",
        help="fixed intervals to compare, minutes, e.g. '5,15,30' (default 5 15 30 60 120; "
        "with --nodes: 30)",
    )
    parser.add_argument(
        "--prior-mtbf-h", type=_positive, help="adaptive: prior MTBF (default: IntervalConfig's)"
    )
    parser.add_argument(
        "--half-life-h", type=_positive, help="adaptive: forgetting half-life of run time"
    )
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="draw the result (matplotlib)")
    cluster = parser.add_argument_group(
        "cluster size",
        "N nodes failing independently (Poisson), any one failure interrupting the whole job: "
        "the cluster MTBF is node MTBF / N. Prints per cluster size the cluster MTBF, Daly's "
        "interval, and the waste at it and at --fixed-min (default 30 min), analytic and "
        "simulated. Uses --ckpt-cost-s, --restart-cost-s, --work-h, --runs, --seed.",
    )
    cluster.add_argument(
        "--nodes",
        type=_node_counts,
        metavar="N[,N...]",
        help="cluster sizes, e.g. '1,8,64,512,2048'; one N: seven sizes N x 4^k around it",
    )
    cluster.add_argument("--node-mtbf-h", type=_positive, help="each node's MTBF, hours")
    cluster.add_argument(
        "--scenario",
        choices=sorted(PRESETS),
        help="llama3: Meta's Llama 3 405B run, 466 interruptions in 54 days on 16,384 GPUs "
        "(2,048 nodes of 8): sets the node MTBF, the nodes (unless --nodes) and C (unless "
        "--ckpt-cost-s)",
    )
    tiers = parser.add_argument_group(
        "two tiers",
        "A memory tier (tmpfs) that survives process failures and a durable one (disk, "
        "remote) that survives machine loss: every k-th save durable (cost --ckpt-cost-s), "
        "the others to memory (--memory-cost-s); each save blocks training. Prints one tier "
        "(Daly's interval for the combined rate) against two (Benoit et al. 2017), with the "
        "analytic, numeric and simulated optimum of each. Uses --ckpt-cost-s, "
        "--restart-cost-s, --work-h, --runs, --seed.",
    )
    tiers.add_argument(
        "--tiers", type=int, choices=(1, 2), default=1, help="2: compare one tier with two"
    )
    tiers.add_argument(
        "--process-mtbf-h",
        type=_positive,
        help="mean time between failures that leave the machine standing (crash, OOM, hang)",
    )
    tiers.add_argument(
        "--machine-mtbf-h",
        type=_positive,
        help="mean time between machine losses (reboot, preemption, a node gone)",
    )
    tiers.add_argument("--memory-cost-s", type=_positive, help="save cost C1 to the memory tier")
    return parser


def _process(args: argparse.Namespace) -> FailureProcess:
    mtbf_s = args.mtbf_h * HOUR_S
    if args.failures == "weibull":
        return WeibullFailures(mtbf_s, args.shape)
    if args.failures == "drift":
        after_h = args.mtbf_after_h if args.mtbf_after_h is not None else args.mtbf_h / 8
        change_h = args.change_at_h if args.change_at_h is not None else args.work_h / 2
        return DriftFailures(mtbf_s, after_h * HOUR_S, change_h * HOUR_S, args.ramp_h * HOUR_S)
    if args.failures == "trace":
        return load_trace(args.trace)
    return PoissonFailures(mtbf_s)


def describe(process: FailureProcess) -> str:
    if isinstance(process, WeibullFailures):
        return f"Weibull failures (shape {process.shape:g}), MTBF {process.mtbf_s / HOUR_S:g} h"
    if isinstance(process, DriftFailures):
        ramp = f" over {process.ramp_s / HOUR_S:g} h" if process.ramp_s > 0 else ""
        return (
            f"failures with MTBF {process.mtbf_s / HOUR_S:g} h, changing at "
            f"{process.change_at_s / HOUR_S:g} h{ramp} to {process.mtbf_after_s / HOUR_S:g} h"
        )
    if isinstance(process, TraceFailures):
        return (
            f"trace of {len(process.times_s)} failures, "
            f"mean gap {process.mtbf_at_s(0.0) / HOUR_S:.3g} h"
        )
    if isinstance(process, PoissonFailures):
        return f"Poisson failures, MTBF {process.mtbf_s / HOUR_S:g} h"
    return type(process).__name__


def format_table(result: SimulationResult, baseline: str = "oracle") -> str:
    """Per-run means per strategy, and the waste ratios to `baseline` (with standard errors)."""
    scenario = result.scenario
    names = {r.name for r in result.strategies}
    notes: list[str] = []
    lines = [
        f"{describe(scenario.process)}; C = {scenario.ckpt_s:g} s, R = {scenario.restart_s:g} s, "
        f"work {scenario.work_s / HOUR_S:g} h; {scenario.runs} runs, seed {scenario.seed}",
        "per run: mean interval, failures, and hours lost, saving, restarting, wasted in all",
        f"{'strategy':<20} {'interval':>9} {'failures':>8} {'lost':>7} {'saving':>7} "
        f"{'restart':>7} {'waste':>7} {'x ' + baseline:>14} {'x (lost+saving)':>16}",
    ]
    for strategy in result.strategies:
        cells = [
            f"{strategy.name:<20}",
            f"{strategy.mean(lambda r: r.mean_interval_s) / 60:>5.1f} min",
            f"{strategy.mean(lambda r: float(r.failures)):>8.1f}",
            f"{strategy.mean(lambda r: r.lost_s) / HOUR_S:>7.2f}",
            f"{strategy.mean(lambda r: r.checkpoint_s) / HOUR_S:>7.2f}",
            f"{strategy.mean(lambda r: r.restart_s) / HOUR_S:>7.2f}",
            f"{strategy.mean(total) / HOUR_S:>7.2f}",
        ]
        for measure, width in ((total, 14), (lost_and_checkpoint, 16)):
            if baseline in names:
                ratio, error = result.ratio(strategy.name, baseline, measure)
                cells.append(f"{ratio:.3f} ±{error:.3f}".rjust(width))
            else:
                cells.append("-".rjust(width))
        lines.append(" ".join(cells))
        unfinished = sum(not run.finished for run in strategy.runs)
        if unfinished:
            notes.append(
                f"{strategy.name}: {unfinished} of {len(strategy.runs)} runs did not finish within "
                f"{scenario.max_wall_factor:g}x the work; their waste is a lower bound"
            )
    return "\n".join(lines + notes)


def plot(result: SimulationResult, path: Path, baseline: str = "oracle") -> None:
    """Stacked mean waste per strategy, labelled with its ratio to `baseline`."""
    # Through import_module: matplotlib is an optional extra, typed only when present.
    importlib.import_module("matplotlib").use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    names = [s.name for s in result.strategies]
    parts = [
        ("lost work", lambda r: r.lost_s),
        ("saving", lambda r: r.checkpoint_s),
        ("restarting", lambda r: r.restart_s),
    ]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4.5))
    bottoms = [0.0] * len(names)
    for label, part in parts:
        heights = [s.mean(part) / HOUR_S for s in result.strategies]
        axes.bar(names, heights, bottom=bottoms, label=label)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    if baseline in names:
        for index, strategy in enumerate(result.strategies):
            ratio, _ = result.ratio(strategy.name, baseline)
            axes.annotate(f"{ratio:.2f}x", (index, bottoms[index]), ha="center", va="bottom")
    axes.set_ylabel("waste per run (h)")
    axes.set_title(describe(result.scenario.process), fontsize=10)
    axes.tick_params(axis="x", labelrotation=30)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


# --- cluster size ---------------------------------------------------------------------


def _cluster_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit 2) for options missing, or that do not go with, the cluster table."""
    if args.scenario is not None and args.node_mtbf_h is not None:
        parser.error(f"--scenario {args.scenario} sets the node MTBF: drop --node-mtbf-h")
    if args.mtbf_h is not None:
        parser.error(
            "--mtbf-h is one machine's MTBF; for a cluster give each node's with --node-mtbf-h "
            "(the cluster's is node MTBF / nodes)"
        )
    if args.scenario is None and args.nodes is None:
        parser.error("--node-mtbf-h needs --nodes N (or a list, e.g. 1,8,64)")
    if args.scenario is None and args.node_mtbf_h is None:
        parser.error("--nodes needs --node-mtbf-h (each node's MTBF), or --scenario llama3")
    if args.failures != "poisson" or args.trace is not None:
        parser.error(
            "--nodes models independent Poisson node failures; it does not combine with "
            f"--failures {args.failures} or --trace"
        )
    for option, value in (
        ("--plot", args.plot),
        ("--prior-mtbf-h", args.prior_mtbf_h),
        ("--half-life-h", args.half_life_h),
    ):
        if value is not None:
            parser.error(f"{option} does not apply to the cluster table (--nodes, --scenario)")


def _main_cluster(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _cluster_usage(parser, args)
    preset = PRESETS[args.scenario] if args.scenario is not None else None
    marked: int | None
    if preset is not None:
        node_mtbf_s, default_ckpt_s = preset.failures.node_mtbf_s, preset.ckpt_s
        marked = preset.failures.nodes
    else:
        node_mtbf_s, default_ckpt_s = args.node_mtbf_h * HOUR_S, DEFAULT_CKPT_S
        marked = args.nodes[0] if len(args.nodes) == 1 else None
    nodes = args.nodes or [marked]
    study = ClusterStudy(
        node_mtbf_s=node_mtbf_s,
        ckpt_s=_or(args.ckpt_cost_s, default_ckpt_s),
        restart_s=_or(args.restart_cost_s, DEFAULT_RESTART_S),
        work_s=args.work_h * HOUR_S,
        fixed_s=tuple(m * 60.0 for m in args.fixed_min or CLUSTER_FIXED_MIN),
        runs=args.runs,
        seed=args.seed,
        ckpt_jitter=args.ckpt_jitter,
    )
    if preset is not None:
        given = (args.ckpt_cost_s is not None, args.restart_cost_s is not None)
        print(describe_preset(args.scenario, preset, study, *given))
        print()
    sizes = [scale(study, n) for n in (node_sweep(nodes[0]) if len(nodes) == 1 else nodes)]
    print(format_cluster_table(study, sizes, marked))
    if marked is not None and any(size.nodes == marked for size in sizes):
        label = preset.title if preset is not None else "the cluster asked for"
        print(f"* {label}: {marked:,} nodes")
    return 0


# --- two tiers ------------------------------------------------------------------------

TIER_OPTIONS = ("--process-mtbf-h", "--machine-mtbf-h", "--memory-cost-s")


def _main_tiers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    for option in TIER_OPTIONS:
        if getattr(args, option[2:].replace("-", "_")) is None:
            parser.error(f"--tiers 2 needs {option}")
    for option, given in (
        ("--nodes", args.nodes is not None),
        ("--node-mtbf-h", args.node_mtbf_h is not None),
        ("--scenario", args.scenario is not None),
        ("--mtbf-h", args.mtbf_h is not None),
        ("--failures", args.failures != "poisson"),
        ("--trace", args.trace is not None),
        ("--fixed-min", args.fixed_min is not None),
        ("--plot", args.plot is not None),
        ("--prior-mtbf-h", args.prior_mtbf_h is not None),
        ("--half-life-h", args.half_life_h is not None),
        ("--ckpt-jitter", args.ckpt_jitter != 0.0),
    ):
        if given:
            parser.error(
                f"{option} does not apply to --tiers 2 (Poisson process failures and machine "
                "losses: --process-mtbf-h, --machine-mtbf-h)"
            )
    try:
        scenario = TwoTierScenario(
            costs=TierCosts(
                memory_ckpt_s=args.memory_cost_s,
                durable_ckpt_s=_or(args.ckpt_cost_s, DEFAULT_CKPT_S),
                restart_s=_or(args.restart_cost_s, DEFAULT_RESTART_S),
            ),
            process_mtbf_s=args.process_mtbf_h * HOUR_S,
            machine_mtbf_s=args.machine_mtbf_h * HOUR_S,
            work_s=args.work_h * HOUR_S,
            runs=args.runs,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"stalwart simulate: {exc}", file=sys.stderr)
        return 2
    print(format_tier_table(compare(scenario)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`stalwart simulate`: print the waste table (and draw it with --plot), with --nodes
    or --scenario the cluster-size table, with --tiers 2 one tier against two. 0, or 2
    on misuse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.failures == "trace" and args.trace is None:
        parser.error("--failures trace needs --trace FILE")
    if args.runs is None:
        args.runs = TIER_RUNS if args.tiers == 2 else DEFAULT_RUNS
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.tiers == 2:
        return _main_tiers(parser, args)
    for option in TIER_OPTIONS:
        if getattr(args, option[2:].replace("-", "_")) is not None:
            parser.error(f"{option} needs --tiers 2")
    if args.nodes is not None or args.node_mtbf_h is not None or args.scenario is not None:
        return _main_cluster(parser, args)
    if args.mtbf_h is None:
        args.mtbf_h = DEFAULT_MTBF_H
    if args.plot is not None:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            print(
                "stalwart simulate: --plot needs matplotlib (pip install 'stalwart[plot]')",
                file=sys.stderr,
            )
            return 2
    try:
        process = _process(args)
    except (OSError, ValueError) as exc:
        print(f"stalwart simulate: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, float] = {}
    if args.prior_mtbf_h is not None:
        overrides["prior_mtbf_s"] = args.prior_mtbf_h * HOUR_S
    if args.half_life_h is not None:
        overrides["half_life_s"] = args.half_life_h * HOUR_S
    scenario = Scenario(
        process=process,
        ckpt_s=_or(args.ckpt_cost_s, DEFAULT_CKPT_S),
        restart_s=_or(args.restart_cost_s, DEFAULT_RESTART_S),
        work_s=args.work_h * HOUR_S,
        runs=args.runs,
        seed=args.seed,
        ckpt_jitter=args.ckpt_jitter,
    )
    strategies = default_strategies(
        args.fixed_min or (5, 15, 30, 60, 120), IntervalConfig.model_validate(overrides)
    )
    result = simulate(scenario, strategies)
    print(format_table(result))
    if args.plot is not None:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
