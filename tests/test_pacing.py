"""The advised interval, learned online: the Pacer over a real journal, and end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stalwart.clock import FakeClock
from stalwart.journal import Journal
from stalwart.policy.interval import IntervalConfig, daly_interval_s
from stalwart.supervisor.pacing import Pacer
from stalwart.types import ExitKind
from tests.supervised import environment, stalwart_argv

CONFIG = IntervalConfig(
    min_interval_s=0.01,
    max_interval_s=3600,
    prior_mtbf_s=1.0,
    prior_weight_failures=1.0,
    half_life_s=None,
    hysteresis_fraction=0.05,
)


def test_pacer_learns_and_a_restarted_supervisor_remembers(tmp_path: Path) -> None:
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite") as journal:
        run = journal.start_run("job", ["x"], clock.wall())
        pacer = Pacer(CONFIG, journal, "job", run.run_id, clock)
        assert pacer.decision.basis.value == "unmeasured"
        for attempt in range(40):
            journal.start_attempt(run.run_id, attempt, 1, clock.wall(), "")
            pacer.on_save(
                attempt=attempt,
                step=attempt,
                path=None,
                size_bytes=None,
                stall_s=3.0,
                persist_s=None,
                source="trainer",
                running_exposure_s=50.0,
            )
            decision = pacer.on_attempt_end(100.0, ExitKind.INFRA)
            journal.end_attempt(
                run.run_id,
                attempt,
                now_unix=clock.wall(),
                status=None,
                verdict=__import__("stalwart.types").types.Classification(
                    ExitKind.INFRA, True, "x"
                ),
                uptime_s=100.0,
                decision="restart",
            )
        expected = daly_interval_s(3.0, 100.0 * 40 / 41 + 1.0 / 41)
        assert decision.interval_s == pytest.approx(expected, rel=0.06)
        assert len(journal.interval_decisions("job")) >= 2
        again = Pacer(CONFIG, journal, "job", run.run_id, clock)
        assert again.interval_s == pytest.approx(decision.interval_s, rel=1e-9)
        user_error = again.on_attempt_end(1.0, ExitKind.USER_ERROR)
        assert user_error.mtbf_s >= decision.mtbf_s  # user errors are not machine failures


TRAINER = """
import os, sys, time
from stalwart.client import Client
client = Client()
client.ready()
time.sleep(0.05)
client.step(1)
client.checkpoint_begin(1)
client.saved(1, stall_s=float(sys.argv[1]), persist_s=float(sys.argv[1]))
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(1)
"""


def test_advised_interval_converges_to_the_optimum_for_the_injected_rate(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """Every attempt saves with cost C, then fails after U seconds: M is about U."""
    ckpt_s, uptime_s, attempts = 0.02, 0.5, 16
    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--max-restarts",
        str(attempts - 1),
        "--set",
        "restart.backoff_initial_s=0",
        "--set",
        "checkpoint.interval.min_interval_s=0.01",
        "--set",
        "checkpoint.interval.prior_mtbf_s=1",
        "--set",
        "checkpoint.interval.half_life_s=null",
        "--",
        sys.executable,
        "-c",
        TRAINER,
        str(ckpt_s),
        str(uptime_s),
    )
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3, result.stderr  # the budget ends it
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        decisions = journal.interval_decisions("default")
        attempts_seen = journal.attempts()
    assert len(attempts_seen) == attempts
    mean_uptime = sum(a.uptime_s or 0 for a in attempts_seen) / len(attempts_seen)
    optimum = daly_interval_s(ckpt_s, mean_uptime)
    final = decisions[-1]
    assert final.basis in ("optimum", "held")
    assert final.interval_s == pytest.approx(optimum, rel=0.15), (final, optimum)
    advice = json.loads((runtime_dir / "stalwart" / "default" / "advice.json").read_text())
    assert advice["interval_s"] == final.interval_s  # what the trainer was told


def test_two_tiers_route_each_failure_to_the_tier_that_recovers_it(tmp_path: Path) -> None:
    """With a memory tier, a failure counts toward the memory interval when its kind leaves
    the tier intact, else toward the durable one; what relaunches found is learned, and a
    restarted supervisor learns it again from the journal."""
    from stalwart.journal import CheckpointRecord
    from stalwart.types import Classification

    clock, memory_root = FakeClock(), tmp_path / "shm" / "job-1"
    durable = CONFIG.model_copy(update={"prior_mtbf_s": 1000.0})
    memory = durable.model_copy(update={"min_interval_s": 0.001})
    with Journal(tmp_path / "j.sqlite") as journal:
        run = journal.start_run("job", ["x"], clock.wall())

        def pacer() -> Pacer:
            return Pacer(
                durable, journal, "job", run.run_id, clock, memory=memory, memory_root=memory_root
            )

        first = pacer()
        for pace in (first,):
            pace.on_save(
                attempt=0, step=1, path=None, size_bytes=None, stall_s=0.01, persist_s=0.02,
                source="trainer-memory", running_exposure_s=0.0,
            )  # fmt: skip
            pace.on_save(
                attempt=0, step=1, path=None, size_bytes=None, stall_s=4.0, persist_s=5.0,
                source="trainer", running_exposure_s=0.0,
            )  # fmt: skip
        assert first.memory_model is not None
        before_memory = first.memory_model.decide().mtbf_s
        before_durable = first.model.decide().mtbf_s
        first.on_attempt_end(10.0, ExitKind.OOM)  # the memory tier recovers OOMs (prior 0.9)
        assert first.memory_model.decide().mtbf_s < before_memory
        assert first.model.decide().mtbf_s > before_durable  # run time, no failure
        assert first.memory_interval_s is not None
        assert first.memory_interval_s < first.interval_s
        # UNKNOWN starts at 0.5 (memory); three relaunches that found the tier gone move it.
        assert first._route("UNKNOWN") == ((ExitKind.UNKNOWN,), ())
        for _ in range(3):
            first.on_relaunch(ExitKind.UNKNOWN, memory_intact=False)
        assert first._route("UNKNOWN") == ((), (ExitKind.UNKNOWN,))
        # The journal holds the same evidence: attempt 0 wrote to memory, died UNKNOWN, and
        # attempt 1 resumed from disk; attempt 1 wrote to memory, died, 2 resumed from memory.
        for number, resume in ((0, ""), (1, str(tmp_path / "ck" / "step-1")),
                               (2, str(memory_root / "step-000000002"))):  # fmt: skip
            journal.start_attempt(run.run_id, number, 1, clock.wall(), resume)
            saved = (run.run_id, number, number + 1, None, None, 0.01, 0.02, clock.wall())
            journal.add_checkpoint(CheckpointRecord(*saved, "trainer-memory"))
            journal.end_attempt(
                run.run_id, number, now_unix=clock.wall(), status=None,
                verdict=Classification(ExitKind.UNKNOWN, True, "x"), uptime_s=10.0,
                decision="restart",
            )  # fmt: skip
        again = pacer()
        assert again.tier_rates is not None
        chance = again.tier_rates.memory_intact_chance(ExitKind.UNKNOWN)
        assert chance == pytest.approx((2 * 0.5 + 1) / (2 + 2))  # one intact, one gone
