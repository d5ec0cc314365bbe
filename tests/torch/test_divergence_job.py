"""A real torch job whose loss turns NaN on a poisoned stretch of its data: standalone it
ends NaN; under `stalwart run` the supervisor kills it without a save, quarantines what was
written after the spike, resumes before it and skips past the stretch, and the job ends
healthy. A job that diverges every time gives up with exit 3 after the configured rollbacks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from stalwart.checkpoint import scan
from stalwart.journal import Journal
from tests.supervised import environment, records, stalwart_argv

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_spiky.py"
JOB = ["--steps", "300", "--poison-at", "100", "--save-every", "20"]
RUN_S = 120.0


def supervised(
    tmp_path: Path, runtime_dir: Path, options: list[str], job: list[str]
) -> subprocess.CompletedProcess[str]:
    argv = stalwart_argv(
        "run", "--state-dir", str(tmp_path / "state"), "--ckpt-dir", str(tmp_path / "ck"),
        "--set", "restart.backoff_initial_s=0", *options,
        "--", sys.executable, str(EXAMPLE), *job, "--step-sleep-s", "0.005",
        "--log", str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "final.json"),
    )  # fmt: skip
    return subprocess.run(
        argv, cwd=tmp_path, env=environment(runtime_dir), capture_output=True, text=True,
        timeout=RUN_S, check=False,
    )  # fmt: skip


def test_standalone_the_poisoned_job_ends_nan(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *JOB, "--ckpt-dir", str(tmp_path / "ck"),
         "--out", str(tmp_path / "final.json")],
        capture_output=True, text=True, timeout=RUN_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "final.json").read_text())
    assert math.isnan(summary["final_loss"]) and summary["saw_nonfinite"]


def test_under_stalwart_it_rolls_back_skips_the_stretch_and_ends_healthy(
    tmp_path: Path, runtime_dir: Path
) -> None:
    result = supervised(tmp_path, runtime_dir, ["--set", "divergence.skip_batches=50"], JOB)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "final.json").read_text())
    assert summary["steps"] == 300
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] < 0.1
    assert not summary["saw_nonfinite"]  # the last attempt never met the poisoned stretch
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
        quarantines = journal.quarantines()
    assert [a.kind for a in attempts] == ["DIVERGED", "COMPLETED"]
    assert "non-finite loss" in (attempts[0].reason or "")
    assert "divergence rollback 1 of 3" in (attempts[0].decision or "")
    diverged = [q for q in quarantines if q.reason == "diverged"]
    assert diverged, quarantines  # step 100 at least was written after the last healthy report
    listing = scan(tmp_path / "ck")
    assert {e.name.rsplit("-", 1)[0] for e in listing.quarantined} == {q.name for q in diverged}
    resumed = Path(attempts[1].resume_from or "").name
    assert resumed and int(resumed.rsplit("-", 1)[1]) < 100  # before the poisoned stretch
    # Every loss the last attempt trained on is finite; the first one went NaN.
    losses = records(tmp_path / "log.jsonl")
    assert all(math.isfinite(r["loss"]) for r in losses if r["attempt"] == 1)
    assert any(not math.isfinite(r["loss"]) for r in losses if r["attempt"] == 0)
    assert "the loss diverged" in result.stderr


def test_a_job_that_diverges_every_time_gives_up_after_the_rollbacks(
    tmp_path: Path, runtime_dir: Path
) -> None:
    result = supervised(
        tmp_path,
        runtime_dir,
        ["--set", "divergence.max_rollbacks=2"],
        ["--steps", "300", "--poison-len", "0", "--nan-after-steps", "3", "--save-every", "2"],
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "the loss diverged 3 times" in result.stderr
    assert "divergence rollbacks exhausted (2 of 2)" in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
        runs = journal.runs()
    assert [a.kind for a in attempts] == ["DIVERGED"] * 3
    assert runs[0].status == "gave_up"


def test_the_sampler_skips_batches_across_epochs() -> None:
    from stalwart.torch import ResumableSampler

    sampler = ResumableSampler(10, seed=3, batch_size=4)
    whole = sampler.indices(0) + sampler.indices(1)
    sampler.skip_batches(3)  # 12 indices: the rest of epoch 0 and 2 of epoch 1
    assert (sampler.epoch, sampler.offset) == (1, 2)
    assert list(sampler) == whole[12:]
