"""Cluster scaling in the simulator: node failures add up, the interval shrinks as
1/sqrt(N) and the waste grows as sqrt(N), the Llama 3 figures, the command line."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import re

import pytest

from stalwart.cli.simulate import main
from stalwart.policy.interval import daly_interval_s, expected_waste_fraction
from stalwart.sim.engine import Fixed, Scenario, simulate
from stalwart.sim.failure_models import (
    LLAMA3_405B,
    ClusterFailures,
    PoissonFailures,
    cluster_mtbf_s,
)
from stalwart.sim.scaling import (
    ClusterStudy,
    WasteEstimate,
    fitted_minimum_s,
    node_sweep,
    scale,
)

HOUR = 3600.0
LLAMA3_MTBF_S = 54 * 86400 / 466
"""54 days, 466 interruptions: 10,012 s, 2.78 h."""


def _rows(out: str) -> list[list[str]]:
    """The cluster table's rows, split at spaces."""
    return [line.split() for line in out.splitlines() if re.match(r" *\d[\d,]*\*? ", line)]


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *times], times, strict=False)]


# --- node failures add up -------------------------------------------------------------


def test_cluster_mtbf_is_node_mtbf_over_nodes() -> None:
    assert cluster_mtbf_s(1000 * HOUR, 1) == 1000 * HOUR
    assert cluster_mtbf_s(1000 * HOUR, 8) == 125 * HOUR
    assert ClusterFailures(1000 * HOUR, 250).mtbf_at_s(1e9) == 4 * HOUR
    for nodes in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="whole number >= 1"):
            cluster_mtbf_s(HOUR, nodes)  # type: ignore[arg-type]
    for node_mtbf_s in (0.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="node_mtbf_s"):
            ClusterFailures(node_mtbf_s, 8)


def test_cluster_failures_are_the_merged_failures_of_its_nodes() -> None:
    """32 independent Poisson nodes, merged, fail like `ClusterFailures` (mean and spread
    of the gaps, which for Poisson are equal)."""
    node_mtbf_s, nodes, count = 64 * HOUR, 32, 20000
    streams = [PoissonFailures(node_mtbf_s).times(random.Random(f"node {i}")) for i in range(nodes)]
    merged = list(itertools.islice(heapq.merge(*streams), count))
    drawn = list(
        itertools.islice(ClusterFailures(node_mtbf_s, nodes).times(random.Random(1)), count)
    )
    for times in (merged, drawn):
        gaps = _gaps(times)
        mean = sum(gaps) / len(gaps)
        spread = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
        assert mean == pytest.approx(2 * HOUR, rel=0.03)
        assert spread / mean == pytest.approx(1.0, abs=0.04)


# --- the scaling ----------------------------------------------------------------------


def test_daly_interval_halves_and_waste_doubles_when_nodes_quadruple() -> None:
    """C << M: tau ~ sqrt(2 C M / N), waste ~ sqrt(2 C N / M) (no restart cost)."""
    study = ClusterStudy(node_mtbf_s=50_000 * HOUR, ckpt_s=10.0, restart_s=0.0, work_s=HOUR)
    for nodes in (1, 16, 256):
        small, large = scale(study, nodes), scale(study, 4 * nodes)
        assert small.mtbf_s / large.mtbf_s == pytest.approx(4.0)
        assert small.daly_s / large.daly_s == pytest.approx(2.0, rel=0.01)
        assert large.waste / small.waste == pytest.approx(2.0, rel=0.01)
    # Not at fixed intervals: the lost work grows as N, the save cost stays the same.
    fixed = [scale(study, nodes).fixed_waste[0] for nodes in (1, 4096)]
    assert fixed[0] == pytest.approx(10.0 / 1800.0, rel=0.01)
    assert fixed[1] == pytest.approx(expected_waste_fraction(1800.0, 10.0, 50_000 * HOUR / 4096))


def test_simulated_best_interval_halves_when_nodes_quadruple() -> None:
    """From the simulation alone: one grid of fixed intervals for 16 and 64 nodes (not
    centred on Daly's), the least simulated waste located on each. It halves, and the
    simulated waste at Daly's interval doubles, as the formula says."""
    node_mtbf_s, ckpt_s = 128 * HOUR, 20.0  # clusters of 8 h and 2 h: C/M < 0.3%
    grid_s = [300.0 * 2 ** (k / 4) for k in range(13)]  # 300 s to 40 min
    best_s, waste = [], []
    for nodes in (16, 64):
        daly_s = daly_interval_s(ckpt_s, cluster_mtbf_s(node_mtbf_s, nodes))
        scenario = Scenario(ClusterFailures(node_mtbf_s, nodes), ckpt_s, 0.0, 400 * HOUR, runs=60)
        result = simulate(scenario, [Fixed(daly_s)] + [Fixed(s) for s in grid_s])
        estimates = [WasteEstimate.of(r, scenario.work_s) for r in result.strategies]
        best = fitted_minimum_s(grid_s, [e.fraction for e in estimates[1:]])
        assert best is not None
        assert best == pytest.approx(daly_s, rel=0.05)
        best_s.append(best)
        waste.append(estimates[0])
    assert best_s[0] / best_s[1] == pytest.approx(2.0, rel=0.04)
    mtbfs_s = [8 * HOUR, 2 * HOUR]
    expected = [expected_waste_fraction(daly_interval_s(ckpt_s, m), ckpt_s, m) for m in mtbfs_s]
    # Daly's exact model says 2.05 here (C/M is small, not nothing); so does the simulation.
    ratio = waste[1].fraction / waste[0].fraction
    assert ratio == pytest.approx(2.0, rel=0.04)
    assert ratio == pytest.approx(expected[1] / expected[0], rel=0.02)
    for estimate, fraction in zip(waste, expected, strict=True):
        assert estimate.fraction == pytest.approx(fraction, rel=0.03)
        assert estimate.stderr < 0.02 * estimate.fraction


def test_scale_simulates_where_cheap() -> None:
    study = ClusterStudy(
        node_mtbf_s=256 * HOUR, ckpt_s=20.0, restart_s=300.0, work_s=400 * HOUR, runs=50
    )
    rows = [scale(study, nodes) for nodes in (32, 128)]  # 8 h, 2 h
    for row in rows:
        assert row.simulated is not None
        assert row.simulated.fraction == pytest.approx(row.waste, rel=0.05)
        assert row.simulated_fixed[0].fraction == pytest.approx(row.fixed_waste[0], rel=0.05)
        assert row.best_simulated_s == pytest.approx(row.daly_s, rel=0.1)
    assert rows[0].best_simulated_s is not None and rows[1].best_simulated_s is not None
    assert rows[0].best_simulated_s / rows[1].best_simulated_s == pytest.approx(2.0, rel=0.1)
    expensive = scale(dataclasses.replace(study, runs=10**6), 128)
    assert expensive.simulated is None and expensive.simulated_fixed == ()
    assert expensive.waste == rows[1].waste
    few = scale(dataclasses.replace(study, runs=2), 128)
    assert few.simulated is not None and few.best_simulated_s is None


def test_fitted_minimum() -> None:
    grid = [100.0 * 2 ** (k / 4) for k in range(9)]
    assert fitted_minimum_s(grid, [math.log(x / 250) ** 2 for x in grid]) == pytest.approx(250)
    assert fitted_minimum_s(grid, [math.cosh(math.log(x / 230)) for x in grid]) == pytest.approx(
        230, rel=1e-3
    )
    assert fitted_minimum_s(grid, [float(k) for k in range(9)]) is None  # at the low end
    assert fitted_minimum_s(grid, [-float(k) for k in range(9)]) is None  # at the high end
    with pytest.raises(ValueError, match="three"):
        fitted_minimum_s(grid[:2], [1.0, 2.0])


def test_node_sweep() -> None:
    assert node_sweep(2048) == [2, 8, 32, 128, 512, 2048, 8192]
    assert node_sweep(1) == [1, 4, 16, 64, 256, 1024, 4096]
    assert node_sweep(8) == [2, 8, 32, 128, 512, 2048, 8192]
    assert node_sweep(1000) == [4, 16, 62, 250, 1000, 4000, 16000]
    assert len(node_sweep(10**6)) == 7 and 10**6 in node_sweep(10**6)


# --- Llama 3 ---------------------------------------------------------------------------


def test_llama3_figures() -> None:
    assert LLAMA3_405B.cluster_mtbf_s == pytest.approx(LLAMA3_MTBF_S)
    assert LLAMA3_405B.cluster_mtbf_s / HOUR == pytest.approx(2.78, abs=0.005)
    assert LLAMA3_405B.gpu_mtbf_s / HOUR == pytest.approx(45_570, rel=1e-3)
    assert LLAMA3_405B.nodes == 2048
    assert LLAMA3_405B.node_mtbf_s / HOUR == pytest.approx(5_696, rel=1e-3)
    assert cluster_mtbf_s(LLAMA3_405B.node_mtbf_s, 2048) == pytest.approx(LLAMA3_MTBF_S)
    # Daly's interval at C = 30 s, by hand: sqrt(2 C M) (1 + sqrt(C/2M)/3 + C/18M) - C.
    assert daly_interval_s(30.0, LLAMA3_MTBF_S) == pytest.approx(755.2, abs=0.5)


def test_cli_llama3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "llama3", "--runs", "4", "--work-h", "24"]) == 0
    out = capsys.readouterr().out
    for text in (
        "466 job interruptions in a 54-day snapshot on 16,384 GPUs",
        "arXiv:2407.21783",
        "cluster MTBF  54 d x 24 h / 466 = 2.78 h",
        "45,566 h",
        "5,696 h, 2,048 nodes",
        "C             30 s, assumed",
        "At 2,048 nodes: Daly interval 12.6 min",
        "fixed 30 min",
        "* Llama 3 405B pre-training: 2,048 nodes",
    ):
        assert text in out, text
    rows = _rows(out)
    assert [row[0] for row in rows] == ["2", "8", "32", "128", "512", "2,048*", "8,192"]
    llama = rows[5]
    assert llama[1:3] == ["2.78", "h"] and llama[4:6] == ["12.6", "min"]


def test_cli_llama3_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "llama3", "--ckpt-cost-s", "120", "--restart-cost-s", "300"]
    assert main([*argv, "--nodes", "512,2048", "--runs", "2", "--work-h", "12"]) == 0
    out = capsys.readouterr().out
    assert "C             120 s (--ckpt-cost-s)" in out
    assert "R             300 s (--restart-cost-s)" in out
    assert "Daly interval 24.5 min" in out  # C = 120 s at 2.78 h
    assert [row[0] for row in _rows(out)] == [
        "512",
        "2,048*",
    ]


def test_cli_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--nodes", "1,8,64", "--node-mtbf-h", "1000", "--runs", "3", "--work-h", "24"]
    assert main([*argv, "--fixed-min", "10,60"]) == 0
    out = capsys.readouterr().out
    assert "node MTBF 1,000 h" in out and "C = 120 s, R = 600 s" in out
    assert "fixed 10 min" in out and "fixed 60 min" in out
    rows = _rows(out)
    assert [row[0] for row in rows] == ["1", "8", "64"]
    assert [" ".join(row[1:3]) for row in rows] == ["1,000 h", "125 h", "15.6 h"]
    assert "*" not in out
    assert main(["--nodes", "64", "--node-mtbf-h", "1000", "--runs", "2", "--work-h", "1"]) == 0
    out = capsys.readouterr().out
    assert "64*" in out and "* the cluster asked for: 64 nodes" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "0", "--node-mtbf-h", "100"], "whole numbers of nodes >= 1"),
        (["--nodes", "-4", "--node-mtbf-h", "100"], "whole numbers of nodes >= 1"),
        (["--nodes", "1.5", "--node-mtbf-h", "100"], "whole numbers of nodes >= 1"),
        (["--nodes", "8,", "--node-mtbf-h", "inf"], "expected a number > 0"),
        (["--nodes", "8", "--node-mtbf-h", "nan"], "expected a number > 0"),
        (["--nodes", "8", "--node-mtbf-h", "0"], "expected a number > 0"),
        (["--nodes", "8"], "--nodes needs --node-mtbf-h"),
        (["--node-mtbf-h", "100"], "--node-mtbf-h needs --nodes"),
        (["--nodes", "8", "--node-mtbf-h", "100", "--mtbf-h", "3"], "--mtbf-h is one machine"),
        (["--scenario", "llama3", "--node-mtbf-h", "100"], "sets the node MTBF"),
        (["--scenario", "llama3", "--mtbf-h", "3"], "--mtbf-h is one machine"),
        (["--scenario", "llama3", "--failures", "weibull"], "independent Poisson node"),
        (["--nodes", "8", "--node-mtbf-h", "1", "--plot", "x.png"], "--plot does not apply"),
        (["--scenario", "llama3", "--prior-mtbf-h", "5"], "--prior-mtbf-h does not apply"),
        (["--scenario", "llama4"], "invalid choice"),
    ],
)
def test_cli_cluster_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
