"""Hang detection: the pure detector on a fake clock, and end to end with real trainers."""

from __future__ import annotations

import math
import re
import sys
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.journal import Journal
from stalwart.policy.hang import HangConfig, HangDetector, quantile
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


# several ranks (torchrun workers each heartbeat with RANK=n)


def _beat_all(hang: HangDetector, ranks: range, until_s: float, every_s: float = 0.1) -> float:
    now, step = 0.0, 0
    while now < until_s:
        step += 1
        for rank in ranks:
            hang.heartbeat(now, step, rank)
        now = round(now + every_s, 6)
    return now


def test_the_slowest_rank_decides() -> None:
    hang = detector(factor=3, floor_s=1, first_step_s=100, warmup_heartbeats=3)
    now = _beat_all(hang, range(4), until_s=2.0)  # 20 steps, all ranks, gaps of 0.1 s
    rank2_last = now - 0.1
    for step in range(21, 41):  # ranks 0, 1, 3 go on; rank 2 is silent
        for rank in (0, 1, 3):
            hang.heartbeat(now, step, rank)
        now = round(now + 0.1, 6)
    assert hang.threshold_s(now) == pytest.approx(1.0)
    assert hang.deadline_s(now) == pytest.approx(rank2_last + 1.0)
    assert hang.is_hung(now) and hang.slowest_rank(now) == 2
    assert hang.silence_s(now) == pytest.approx(now - rank2_last)
    assert hang.last_step == 20  # the slowest rank's step, not the fastest's 40
    stats = hang.stats(now)
    assert (stats.last_step, stats.ranks, stats.heartbeats) == (20, 4, 80 + 60)
    assert stats.steps_per_s == pytest.approx(10.0, rel=0.1)


def test_ranks_in_step_behave_like_one() -> None:
    one = detector(factor=3, floor_s=1, first_step_s=100, warmup_heartbeats=3)
    many = detector(factor=3, floor_s=1, first_step_s=100, warmup_heartbeats=3)
    now = _beat_all(one, range(1), until_s=2.0)
    assert _beat_all(many, range(8), until_s=2.0) == now
    for at in (now, now + 0.5, now + 2.0):
        assert many.deadline_s(at) == one.deadline_s(at)
        assert many.is_hung(at) == one.is_hung(at)
    assert many.last_step == one.last_step and many.slowest_rank(now) in range(8)


def test_a_late_rank_gets_the_first_step_allowance() -> None:
    hang = detector(factor=3, floor_s=1, first_step_s=50, warmup_heartbeats=3)
    now = _beat_all(hang, range(1), until_s=2.0)
    hang.heartbeat(now, rank=1)  # READY from a rank that starts later (pipeline stage)
    assert hang.deadline_s(now) == pytest.approx(now - 0.1 + 1.0)  # rank 0: learned
    for step in range(21, 40):
        hang.heartbeat(now, step, 0)
        now = round(now + 0.1, 6)
    assert not hang.is_hung(now)  # rank 1 silent 1.9 s, but still in its first step
    assert hang.slowest_rank(now) == 0 and hang.deadline_s(now) == pytest.approx(now - 0.1 + 1)


def test_a_rank_restarted_in_place_starts_its_allowance_again() -> None:
    hang = detector(factor=3, floor_s=1, first_step_s=50, warmup_heartbeats=3)
    now = _beat_all(hang, range(2), until_s=2.0)
    hang.rank_started(now, 1)  # torchrun restarted the worker: READY again
    for step in range(1, 20):
        hang.heartbeat(now, 20 + step, 0)
        now = round(now + 0.1, 6)
    assert not hang.is_hung(now) and hang.last_step == 20 + 19  # rank 1 has no step yet
    assert hang.deadline_s(now) == pytest.approx(now - 0.1 + 1.0)  # rank 0 decides


def test_checkpoint_brackets_span_all_ranks() -> None:
    hang = detector(factor=3, floor_s=1, first_step_s=100, checkpoint_s=30, warmup_heartbeats=3)
    now = _beat_all(hang, range(2), until_s=2.0)
    hang.checkpoint_begin(now, rank=1)  # any rank's CKPT_BEGIN starts the allowance
    assert hang.threshold_s(now) == 30
    assert not hang.is_hung(now + 25)  # rank 0 said nothing since; the save covers it
    gaps_before = hang.stats(now + 25).gap_tail_s
    hang.checkpoint_end(now + 25)  # one rank's report ends it for every rank
    assert hang.threshold_s(now + 25) == pytest.approx(1.0)
    assert hang.deadline_s(now + 25) == pytest.approx(now + 26)  # every gap clock restarted
    assert hang.silence_s(now + 25) == 0.0
    hang.heartbeat(now + 25.1, 21, 0)
    hang.heartbeat(now + 25.1, 21, 1)
    assert hang.stats(now + 27).gap_tail_s == pytest.approx(gaps_before)  # not a step gap


class _SingleRank:
    """The detector as it was before ranks: the oracle for the implicit rank."""

    def __init__(self, config: HangConfig) -> None:
        self.cfg = config
        self.gaps: deque[float] = deque(maxlen=config.window_heartbeats)
        self.last: float | None = None
        self.last_step: int | None = None
        self.in_ckpt = False
        self.tail: float | None = None
        self.tail_at = -math.inf

    def heartbeat(self, now: float, step: int | None = None) -> None:
        if self.last is not None:
            self.gaps.append(max(now - self.last, 0.0))
        self.last = now
        if step is not None:
            self.last_step = step

    def checkpoint_begin(self, now: float) -> None:
        self.in_ckpt = True
        self.heartbeat(now)

    def checkpoint_end(self, now: float) -> None:
        self.in_ckpt = False
        self.last = now

    def deadline_s(self, now: float) -> float | None:
        if not self.cfg.enabled or self.last is None:
            return None
        cfg = self.cfg
        if len(self.gaps) < cfg.warmup_heartbeats:
            threshold = max(cfg.first_step_s, cfg.floor_s)
        else:
            if now - self.tail_at >= 1.0 and self.gaps:
                self.tail = quantile(sorted(self.gaps), cfg.tail_quantile)
                self.tail_at = now
            threshold = max(cfg.factor * (self.tail or 0.0), cfg.floor_s)
        if self.in_ckpt:
            threshold = max(threshold, cfg.checkpoint_s)
        return self.last + threshold


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["beat", "step", "begin", "end", "ask"]),
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    EVENTS,
    st.integers(min_value=1, max_value=6),
    st.sampled_from([None, 0, 3]),
)
def test_one_rank_with_or_without_rank_is_the_single_rank_detector(
    events: list[tuple[str, float]], warmup: int, rank: int | None
) -> None:
    config = HangConfig(
        factor=3, floor_s=0.5, first_step_s=8, checkpoint_s=20, warmup_heartbeats=warmup
    )
    oracle, hang = _SingleRank(config), HangDetector(config)
    now, step = 0.0, 0
    for kind, dt in events:
        now += dt
        if kind == "beat":
            oracle.heartbeat(now)
            hang.heartbeat(now, rank=rank)
        elif kind == "step":
            step += 1
            oracle.heartbeat(now, step)
            hang.heartbeat(now, step, rank)
        elif kind == "begin":
            oracle.checkpoint_begin(now)
            hang.checkpoint_begin(now, rank)
        elif kind == "end":
            oracle.checkpoint_end(now)
            hang.checkpoint_end(now, rank)
        expected = oracle.deadline_s(now)
        got = hang.deadline_s(now)
        assert (got is None) == (expected is None)
        if expected is not None:
            assert got == pytest.approx(expected)
            assert hang.is_hung(now) == (now >= expected)
        assert hang.last_step == oracle.last_step
        assert hang.silence_s(now) == (None if oracle.last is None else now - oracle.last)
