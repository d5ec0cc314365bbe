"""The interval simulator: accounting by hand, determinism, sanity, the command line."""

from __future__ import annotations

import math
import random
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.cli.simulate import main, plot
from stalwart.policy.interval import daly_interval_s
from stalwart.sim.engine import (
    Adaptive,
    Draws,
    Fixed,
    Oracle,
    Planner,
    Repeat,
    RunContext,
    Scenario,
    default_strategies,
    lost_and_checkpoint,
    simulate,
    simulate_run,
    total,
)
from stalwart.sim.failure_models import (
    DriftFailures,
    PoissonFailures,
    TraceFailures,
    WeibullFailures,
    load_trace,
)

HOUR = 3600.0


class _SlowFixed(Planner):
    """A fixed interval the simulator may not skip ahead on (static is False)."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s

    def interval_s(self, now_s: float) -> float:
        return self._interval_s


def _scenario(**overrides: object) -> Scenario:
    values: dict[str, object] = {
        "process": PoissonFailures(HOUR),
        "ckpt_s": 60.0,
        "restart_s": 100.0,
        "work_s": 1800.0,
    }
    values.update(overrides)
    return Scenario(**values)  # type: ignore[arg-type]


# --- accounting -----------------------------------------------------------------------


def test_no_failures_costs_only_the_saves() -> None:
    scenario = _scenario(work_s=3600.0)
    run = simulate_run(
        Fixed(600.0).planner(RunContext(scenario.process, 60.0)),
        Draws(iter([1e12])),
        Repeat(60.0),
        scenario,
    )
    assert (run.saves, run.failures) == (5, 0)  # the last segment ends the job, no save
    assert run.checkpoint_s == 300.0
    assert run.lost_s == run.restart_s == 0.0
    assert run.finished


def test_one_failure_by_hand() -> None:
    """Saves at 600-660 and 1260-1320; the failure at 1500 kills the final segment
    (180 s lost); restart until 1600; the job ends at 2200: 400 s of waste."""
    run = simulate_run(_SlowFixed(600.0), Draws(iter([1500.0, 1e12])), Repeat(60.0), _scenario())
    assert (run.lost_s, run.checkpoint_s, run.restart_s) == (180.0, 120.0, 100.0)
    assert run.total_s == 400.0
    assert run.lost_and_checkpoint_s == 300.0
    assert (run.failures, run.saves) == (1, 2)


def test_failure_during_a_save_and_during_a_restart() -> None:
    """Fails at 630 (mid-save: 630 s lost), again at 680 (restart restarts: 50 s), restart
    until 780; then 600 + 60 save, 600 + 60 save, 600: the job ends at 2700."""
    failures = Draws(iter([630.0, 680.0, 1e12]))
    run = simulate_run(_SlowFixed(600.0), failures, Repeat(60.0), _scenario())
    assert (run.lost_s, run.checkpoint_s, run.restart_s) == (630.0, 120.0, 150.0)
    assert run.total_s == 2700.0 - 1800.0
    assert run.failures == 2


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**31),
    interval_s=st.floats(min_value=10.0, max_value=5000.0),
    ckpt_s=st.floats(min_value=0.0, max_value=300.0),
    restart_s=st.floats(min_value=0.0, max_value=300.0),
    mtbf_s=st.floats(min_value=300.0, max_value=1e5),
    work_s=st.floats(min_value=1.0, max_value=2e4),
)
def test_skipping_ahead_changes_nothing(
    *,
    seed: int,
    interval_s: float,
    ckpt_s: float,
    restart_s: float,
    mtbf_s: float,
    work_s: float,
) -> None:
    """The fast path for fixed intervals gives what stepping one save at a time gives."""
    scenario = _scenario(
        process=PoissonFailures(mtbf_s), ckpt_s=ckpt_s, restart_s=restart_s, work_s=work_s
    )
    failures = Draws(scenario.process.times(random.Random(seed)))
    fast = simulate_run(
        Fixed(interval_s).planner(RunContext(scenario.process, ckpt_s)),
        failures,
        Repeat(ckpt_s),
        scenario,
    )
    slow = simulate_run(_SlowFixed(interval_s), failures, Repeat(ckpt_s), scenario)
    assert fast.failures == slow.failures
    assert fast.saves == slow.saves
    for name in ("lost_s", "checkpoint_s", "restart_s"):
        assert getattr(fast, name) == pytest.approx(getattr(slow, name), rel=1e-9, abs=1e-6)
    assert min(fast.lost_s, fast.checkpoint_s, fast.restart_s) >= 0


def test_cut_off_when_it_cannot_finish() -> None:
    scenario = _scenario(process=PoissonFailures(10.0), work_s=600.0, runs=2)
    result = simulate(scenario, [Fixed(600.0)])
    assert not any(run.finished for run in result.strategies[0].runs)
    assert all(run.total_s >= 0 for run in result.strategies[0].runs)


# --- determinism and sanity -----------------------------------------------------------


def test_deterministic_for_a_seed() -> None:
    scenario = _scenario(
        process=WeibullFailures(2 * HOUR, 0.6), work_s=24 * HOUR, runs=5, ckpt_jitter=0.3
    )
    first = simulate(scenario, default_strategies((10, 60)))
    again = simulate(scenario, default_strategies((10, 60)))
    other = simulate(Scenario(**{**scenario.__dict__, "seed": 1}), default_strategies((10, 60)))
    assert first == again
    assert first.get("stalwart adaptive") != other.get("stalwart adaptive")


def test_oracle_beats_fixed_intervals_on_poisson() -> None:
    mtbf_s, ckpt_s = 4 * HOUR, 120.0
    optimum_s = daly_interval_s(ckpt_s, mtbf_s)
    scenario = Scenario(
        PoissonFailures(mtbf_s), ckpt_s, restart_s=300.0, work_s=72 * HOUR, runs=150, seed=3
    )
    fixed = [Fixed(optimum_s * f) for f in (0.1, 0.4, 2.5, 6.0)] + [Fixed(300.0), Fixed(7200.0)]
    result = simulate(scenario, [Oracle(), Adaptive(), *fixed])
    oracle = result.get("oracle").mean(total)
    for strategy in fixed:
        assert oracle <= result.get(strategy.name).mean(total), strategy.name
        ratio, error = result.ratio(strategy.name, measure=lost_and_checkpoint)
        assert ratio > 1.0 and error < 0.1 * ratio
    assert result.ratio("oracle") == (1.0, 0.0)
    adaptive, _ = result.ratio("stalwart adaptive")
    assert adaptive < 1.2


def test_adaptive_learns_the_optimum() -> None:
    """After ~250 failures the adaptive interval is near Daly's for the true rate."""
    mtbf_s, ckpt_s = HOUR, 30.0
    scenario = Scenario(PoissonFailures(mtbf_s), ckpt_s, 60.0, work_s=240 * HOUR)
    planner = Adaptive().planner(RunContext(scenario.process, ckpt_s))
    failures = Draws(scenario.process.times(random.Random(11)))
    run = simulate_run(planner, failures, Repeat(ckpt_s), scenario)
    assert run.failures > 200
    # Hysteresis (10%) plus noise (~70 effective failures remembered): within 25%.
    last = planner.model.last
    assert last is not None
    assert last.interval_s == pytest.approx(daly_interval_s(ckpt_s, mtbf_s), rel=0.25)
    assert last.mtbf_s == pytest.approx(mtbf_s, rel=0.5)


# --- failure processes ----------------------------------------------------------------


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *times], times, strict=False)]


def _take(process: object, count: int, seed: int = 0) -> list[float]:
    assert hasattr(process, "times")
    iterator = process.times(random.Random(seed))
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("process", [PoissonFailures(HOUR), WeibullFailures(HOUR, 0.6)])
def test_mean_gap_is_the_mtbf(process: PoissonFailures | WeibullFailures) -> None:
    gaps = _gaps(_take(process, 20000))
    assert sum(gaps) / len(gaps) == pytest.approx(HOUR, rel=0.05)
    assert process.mtbf_at_s(1e6) == HOUR


def test_weibull_below_one_is_bursty() -> None:
    gaps = _gaps(_take(WeibullFailures(HOUR, 0.6), 20000))
    mean = sum(gaps) / len(gaps)
    spread = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert spread / mean > 1.3  # exponential: 1; shape 0.6: ~1.76


def test_drift_changes_the_rate() -> None:
    process = DriftFailures(HOUR, HOUR / 4, change_at_s=1000 * HOUR, ramp_s=100 * HOUR)
    times = _take(process, 6000)
    before = sum(1 for t in times if t < 1000 * HOUR)
    after = sum(1 for t in times if 1100 * HOUR <= t < 1200 * HOUR)
    assert before == pytest.approx(1000, rel=0.1)
    assert after == pytest.approx(400, rel=0.15)
    assert process.mtbf_at_s(1050 * HOUR) == pytest.approx(HOUR / 2.5)
    assert not process.constant


def test_trace_replays_its_gaps_cyclically() -> None:
    process = TraceFailures((10.0, 30.0, 60.0))
    times = _take(process, 6, seed=5)
    gaps = _gaps(times)
    assert sorted(gaps[:3]) == [10.0, 20.0, 30.0]
    assert gaps[3:] == gaps[:3]
    assert process.mtbf_at_s(0.0) == 20.0


def test_load_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("# failures of node 7\n3600\n\n  7200.5  # a GPU fell off\n100\n")
    assert load_trace(path).times_s == (100.0, 3600.0, 7200.5)
    path.write_text("100\nsoon\n")
    with pytest.raises(ValueError, match=r"trace.txt:2: not a number"):
        load_trace(path)
    path.write_text("-5\n")
    with pytest.raises(ValueError, match=r"trace.txt:1: .* >= 0"):
        load_trace(path)
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no failure times"):
        load_trace(path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PoissonFailures(0.0),
        lambda: WeibullFailures(HOUR, 0.0),
        lambda: DriftFailures(HOUR, math.inf, 0.0),
        lambda: TraceFailures(()),
        lambda: TraceFailures((5.0, 1.0)),
    ],
)
def test_processes_reject_nonsense(make: object) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=r"must be|needs"):
        make()


# --- command line ---------------------------------------------------------------------


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--runs", "3", "--work-h", "24", "--mtbf-h", "4", "--fixed-min", "5,60"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("oracle", "stalwart adaptive", "fixed 5 min", "fixed 60 min"):
        assert name in out
    assert "fixed 15 min" not in out
    assert "Poisson failures, MTBF 4 h" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--failures", "weibull", "--shape", "0.7"], "Weibull failures (shape 0.7)"),
        (["--failures", "drift", "--mtbf-after-h", "1"], "changing at 12 h to 1 h"),
    ],
)
def test_cli_processes(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--runs", "2", "--work-h", "24", "--fixed-min", "30", *args]) == 0
    assert expected in capsys.readouterr().out


def test_cli_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("\n".join(str(3600.0 * k) for k in range(1, 11)))
    assert main(["--failures", "trace", "--trace", str(path), "--runs", "2", "--work-h", "24"]) == 0
    assert "trace of 10 failures, mean gap 1 h" in capsys.readouterr().out
    path.write_text("nope\n")
    assert main(["--failures", "trace", "--trace", str(path)]) == 2
    assert "not a number" in capsys.readouterr().err
    assert main(["--failures", "trace", "--trace", str(tmp_path / "missing")]) == 2


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--failures", "trace"],
        ["--runs", "0"],
        ["--mtbf-h", "-1"],
        ["--fixed-min", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    capsys.readouterr()


def test_cli_plot_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["--runs", "1", "--plot", str(tmp_path / "out.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_plot_draws_and_saves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With a stand-in matplotlib (the real one is an optional extra)."""
    figure, axes = mock.MagicMock(), mock.MagicMock()
    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = mock.MagicMock(return_value=(figure, axes))  # type: ignore[attr-defined]
    pyplot.close = mock.MagicMock()  # type: ignore[attr-defined]
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use = mock.MagicMock()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    result = simulate(_scenario(runs=2), default_strategies((5,)))
    plot(result, tmp_path / "out.png")
    figure.savefig.assert_called_once_with(tmp_path / "out.png", dpi=120)
    assert axes.bar.call_count == 3  # lost, saving, restarting
    assert axes.annotate.call_count == 3  # one ratio label per strategy


def test_plot_with_real_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    assert main(["--runs", "2", "--work-h", "24", "--fixed-min", "30", "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
