"""Hang detection: the pure detector on a fake clock, and end to end with real trainers."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from stalwart.config import HangConfig
from stalwart.journal import Journal
from stalwart.monitor import HangDetector
from tests.supervised import environment, stalwart_argv

HEARTBEAT = Path(__file__).parent / "trainers" / "heartbeat.py"


def detector(**overrides: object) -> HangDetector:
    return HangDetector(HangConfig.model_validate(overrides))


def test_never_armed_without_heartbeats() -> None:
    hang = detector(floor_s=1, first_step_s=1)
    assert hang.deadline_s(1e9) is None
    assert not hang.is_hung(1e9)


def test_learned_threshold_with_floor() -> None:
    hang = detector(factor=10, floor_s=2, first_step_s=100, warmup_heartbeats=3)
    now = 0.0
    for step in range(20):
        hang.heartbeat(now, step)
        now += 0.1
    # gaps of 0.1 s: 10 x 0.1 = 1 s, below the floor of 2 s
    assert hang.threshold_s(now) == pytest.approx(2.0)
    slow = detector(factor=10, floor_s=2, first_step_s=100, warmup_heartbeats=3)
    now = 0.0
    for step in range(20):
        slow.heartbeat(now, step)
        now += 1.0
    assert slow.threshold_s(now) == pytest.approx(10.0)
    assert not slow.is_hung(now - 1 + 9.9)
    assert slow.is_hung(now - 1 + 10.0)


def test_first_steps_and_checkpoints_get_their_allowance() -> None:
    hang = detector(factor=3, floor_s=1, first_step_s=50, checkpoint_s=30, warmup_heartbeats=3)
    hang.heartbeat(0.0)  # READY
    assert hang.threshold_s(0.0) == 50  # restore + first step
    for step, at in enumerate([40.0, 40.1, 40.2, 40.3], start=1):
        hang.heartbeat(at, step)
    # gaps 40, .1, .1, .1: the slow first step is in the window; learned threshold applies
    hang.checkpoint_begin(41.0)
    assert hang.threshold_s(41.0) >= 30
    assert not hang.is_hung(41.0 + 29)
    hang.checkpoint_end(80.0)
    assert hang.silence_s(80.0) == 0.0


def test_stats_report_rate() -> None:
    hang = detector()
    for step in range(11):
        hang.heartbeat(step * 0.5, step * 10)
    stats = hang.stats(10.0)
    assert stats.last_step == 100
    assert stats.steps_per_s == pytest.approx(20.0)
    assert stats.gap_p50_s == pytest.approx(0.5)


def _run(tmp_path: Path, runtime_dir: Path, trainer: list[str], options: list[str]):  # type: ignore[no-untyped-def]
    import subprocess

    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--set",
        "restart.backoff_initial_s=0.05",
        "--set",
        "hang.floor_s=1",
        "--set",
        "hang.factor=3",
        "--set",
        "hang.warmup_heartbeats=3",
        "--set",
        "hang.first_step_s=8",
        "--set",
        "hang.dump_wait_s=2",
        *options,
        "--",
        sys.executable,
        str(HEARTBEAT),
        *trainer,
    )
    started = time.monotonic()
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("how", ["busy", "stop"])
def test_hung_trainer_is_killed_dumped_and_relaunched(
    tmp_path: Path, runtime_dir: Path, how: str
) -> None:
    result, _ = _run(tmp_path, runtime_dir, ["--hang-at", "20", "--hang", how], [])
    assert result.returncode == 0, result.stderr
    assert "is hung: no heartbeat for" in result.stderr
    silence = float(
        re.search(r"no heartbeat for ([\d.]+) s \(threshold ([\d.]+) s", result.stderr)[1]
    )
    threshold = float(re.search(r"threshold ([\d.]+) s", result.stderr)[1])
    assert threshold <= silence <= threshold + 1.0  # detected within threshold + 1 s
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        kinds = [a.kind for a in journal.attempts()]
    assert kinds == ["HANG", "COMPLETED"]
    dumps = list((tmp_path / "state" / "dumps").glob("stacks-*.txt"))
    assert dumps, "no stack dump written"
    text = "".join(d.read_text() for d in dumps)
    assert "heartbeat.py" in text and "in main" in text


def test_slow_first_step_is_not_a_hang(tmp_path: Path, runtime_dir: Path) -> None:
    # step time 0.05 s; first step 10x+ slower (1.5 s) and beyond the learned floor of 1 s
    result, _ = _run(
        tmp_path, runtime_dir, ["--steps", "30", "--step-s", "0.05", "--first-step-s", "1.5"], []
    )
    assert result.returncode == 0, result.stderr
    assert "is hung" not in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert [a.kind for a in journal.attempts()] == ["COMPLETED"]


def test_trainer_without_heartbeats_is_never_hang_killed(tmp_path: Path, runtime_dir: Path) -> None:
    import subprocess

    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--set",
        "hang.floor_s=0.2",
        "--set",
        "hang.first_step_s=0.2",
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(2)",
    )
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is hung" not in result.stderr
