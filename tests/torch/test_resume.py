"""The example job end to end: bitwise resume under `stalwart run` after SIGKILLs at random
points (some during an asynchronous save), standalone drain and resume, and a save that
runs out of disk in a real process."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from stalwart.checkpoint import scan
from stalwart.journal import Journal
from tests.conftest import wait_for
from tests.supervised import environment, records, stalwart_argv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_tiny.py"
SLOW_SAVE = Path(__file__).parent / "slow_save.py"
STEPS = 300
TINY = [
    "--steps", str(STEPS), "--d-model", "32", "--layers", "1", "--heads", "2", "--block", "16",
    "--batch", "8", "--corpus-lines", "2000", "--threads", "1", "--print-every", "100000",
]  # fmt: skip
RUN_S = 120.0


@dataclass(frozen=True)
class Reference:
    losses: dict[int, float]
    summary: dict[str, Any]


def trainer_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["STALWART_TEST_TOKEN"] = os.environ.get("STALWART_TEST_TOKEN", "")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return env


def step_losses(log: Path) -> list[dict[str, Any]]:
    return [r for r in records(log) if "step" in r]


def same_summary(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("steps", "final_loss", "last_loss", "weights_sha256", "optimizer_sha256"):
        assert got[key] == want[key], key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted run, standalone, with the default (asynchronous) saves."""
    base = tmp_path_factory.mktemp("reference")
    cache = tmp_path_factory.getbasetemp() / "torchinductor"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *TINY, "--ckpt-dir", str(base / "ck"),
         "--log", str(base / "log.jsonl"), "--out", str(base / "final.json")],
        env=trainer_env(cache), capture_output=True, text=True, timeout=RUN_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    losses = {r["step"]: r["loss"] for r in step_losses(base / "log.jsonl")}
    assert sorted(losses) == list(range(1, STEPS + 1))
    summary = json.loads((base / "final.json").read_text())
    assert summary["final_loss"] < losses[1]  # it learns
    return Reference(losses, summary)


def last_step(log: Path, attempt: int) -> int | None:
    steps = [r["step"] for r in step_losses(log) if r["attempt"] == attempt]
    return steps[-1] if steps else None


def wait_until_step(log: Path, attempt: int, more: int) -> None:
    """Until `attempt` has done `more` steps past its first logged one."""
    wait_for(lambda: last_step(log, attempt) is not None, RUN_S / 4, f"attempt {attempt}")
    target = min((last_step(log, attempt) or 0) + more, STEPS - 10)
    wait_for(
        lambda: (last_step(log, attempt) or 0) >= target,
        RUN_S / 4,
        f"attempt {attempt} to reach step {target}",
    )


def resumed_step(log: Path, attempt: int) -> int:
    found = [r["resumed"] for r in records(log) if r.get("attempt") == attempt and "resumed" in r]
    return found[-1] if found else 0


def newest_committed(ckpt_dir: Path) -> int:
    """The newest committed step in the directory (0 if none)."""
    steps = [
        int(p.name.split("-")[1]) for p in ckpt_dir.glob("step-*") if (p / "MANIFEST.json").exists()
    ]
    return max(steps, default=0)


def saving(markers: Path, pid: int) -> bool:
    """Whether trainer `pid` is inside a (slowed) checkpoint fsync right now."""
    marker = markers / "saving"
    return marker.exists() and marker.read_text() == str(pid)


@pytest.mark.timeout(240)
def test_sigkills_anywhere_resume_bitwise_under_stalwart_run(
    tmp_path: Path, runtime_dir: Path, reference: Reference
) -> None:
    markers, ckpt_dir, log = tmp_path / "markers", tmp_path / "ck", tmp_path / "log.jsonl"
    markers.mkdir()
    env = environment(runtime_dir)
    env.update(SLOW_SAVE_DIR=str(markers), SLOW_SAVE_DELAY_S="0.1")
    argv = stalwart_argv(
        "run", "--state-dir", str(tmp_path / "state"), "--ckpt-dir", str(ckpt_dir),
        "--set", "restart.backoff_initial_s=0",
        "--set", "checkpoint.interval.mode=fixed",
        "--set", "checkpoint.interval.fixed_interval_s=0.2",
        "--", sys.executable, str(SLOW_SAVE), *TINY,
        "--log", str(log), "--out", str(tmp_path / "final.json"),
    )  # fmt: skip
    rng = random.Random(5)
    plan = ["step", "save", "step", "save", "step"]
    killed_in_save = 0
    with (tmp_path / "output.txt").open("w") as output:
        supervisor = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=output, stderr=output)
        try:
            for attempt, how in enumerate(plan):
                pid_file = markers / f"pid-{attempt}"
                wait_for(pid_file.exists, RUN_S / 4, f"attempt {attempt} to start")
                pid = int(pid_file.read_text())
                if how == "step":
                    # Only after this attempt has committed a save of its own: under load
                    # a kill could otherwise land before any new checkpoint exists.
                    wait_for(
                        lambda attempt=attempt: last_step(log, attempt) is not None,
                        RUN_S / 4,
                        f"attempt {attempt} to train",
                    )  # by then it has logged where it resumed from
                    start = resumed_step(log, attempt)
                    wait_for(
                        lambda start=start: newest_committed(ckpt_dir) > start,
                        RUN_S / 4,
                        f"attempt {attempt} to commit a checkpoint",
                    )
                    wait_until_step(log, attempt, rng.randint(20, 100))
                else:
                    wait_for(partial(saving, markers, pid), RUN_S / 4, f"attempt {attempt} to save")
                    killed_in_save += bool(scan(ckpt_dir).staging)
                os.kill(pid, signal.SIGKILL)
            assert supervisor.wait(timeout=RUN_S) == 0, (tmp_path / "output.txt").read_text()
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait()
    assert killed_in_save >= 1
    same_summary(json.loads((tmp_path / "final.json").read_text()), reference.summary)
    rows = step_losses(log)
    for row in rows:  # every loss of every attempt, re-done steps included
        assert row["loss"] == reference.losses[row["step"]], row
    attempts = sorted({row["attempt"] for row in rows})
    assert attempts == list(range(len(plan) + 1))
    resumed = [r["resumed"] for r in records(log) if "resumed" in r]
    assert len(set(resumed)) >= 2, resumed  # resumed from different checkpoints
    for attempt in attempts[1:]:
        first = next(r["step"] for r in rows if r["attempt"] == attempt)
        assert first - 1 in [0, *resumed]
    # Kills before a new checkpoint may make the supervisor quarantine the one resumed from
    # (and roll back one): the losses above show that changes nothing.
    assert not scan(ckpt_dir).staging
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        kinds = [a.kind for a in journal.attempts()]
    assert len(kinds) == len(plan) + 1 and kinds[-1] == "COMPLETED"


@pytest.mark.timeout(120)
def test_standalone_drains_on_sigterm_then_resumes(
    tmp_path: Path, reference: Reference, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log, ckpt_dir = tmp_path / "log.jsonl", tmp_path / "ck"
    argv = [
        sys.executable, str(EXAMPLE), *TINY, "--ckpt-dir", str(ckpt_dir), "--ckpt-every-s",
        "0.1", "--log", str(log), "--out", str(tmp_path / "final.json"),
    ]  # fmt: skip
    env = trainer_env(tmp_path_factory.getbasetemp() / "torchinductor")
    with (tmp_path / "output.txt").open("w") as output:
        trainer = subprocess.Popen(argv, env=env, stdout=output, stderr=output)
        try:
            wait_for(lambda: (last_step(log, 0) or 0) >= 120, RUN_S / 2, "step 120")
            trainer.send_signal(signal.SIGTERM)
            assert trainer.wait(timeout=RUN_S / 2) == 0
        finally:
            if trainer.poll() is None:
                trainer.kill()
                trainer.wait()
    stopped = last_step(log, 0)
    assert stopped is not None and stopped < STEPS
    assert f"stopping at step {stopped}: state saved" in (tmp_path / "output.txt").read_text()
    assert scan(ckpt_dir).managed[0].step == stopped  # the drain saved the last step done
    finished = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=RUN_S, check=False
    )
    assert finished.returncode == 0, finished.stderr
    assert f"resumed at step {stopped}" in finished.stdout
    same_summary(json.loads((tmp_path / "final.json").read_text()), reference.summary)
    for row in step_losses(log):
        assert row["loss"] == reference.losses[row["step"]], row


DISK_FULL = """
import json, resource, signal, sys, time
from pathlib import Path
import torch
from stalwart.checkpoint import DiskFull
from stalwart.torch import Checkpointer

root = Path(sys.argv[1])
model = torch.nn.Linear(256, 256)  # 257 KiB of weights (no optimizer: it imports dynamo, 2 s)
ckpt = Checkpointer(model, ckpt_dir=root, environ={}, interval_s=3600.0)
ckpt.save(1, wait=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
returned = ckpt.save(2)
while ckpt.saving:
    time.sleep(0.01)
try:
    ckpt.step_end(2)
    raised = None
except DiskFull as exc:
    raised = str(exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
ckpt.close()
with Checkpointer(model, ckpt_dir=root, environ={}) as again:
    resumed = again.restore()
print(json.dumps({"returned": returned, "raised": raised, "resumed": resumed}))
"""


def test_disk_full_in_background_raised_in_loop_previous_resumed(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path)],
        env=trainer_env(tmp_path_factory.getbasetemp() / "torchinductor"),
        capture_output=True,
        text=True,
        timeout=RUN_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["returned"] is True
    assert report["raised"] is not None
    assert "checkpoint step-000000002, file model.safetensors: out of space" in report["raised"]
    assert report["resumed"] == 1
    assert [e.name for e in scan(tmp_path).managed] == ["step-000000001"]


def _newest_in(tier: Path) -> Path | None:
    found = sorted(p for p in tier.glob("*/step-*") if (p / "MANIFEST.json").exists())
    return found[-1] if found else None


@pytest.mark.timeout(240)
def test_memory_tier_resumes_from_memory_from_disk_after_a_wipe_and_past_a_torn_one(
    tmp_path: Path, runtime_dir: Path, reference: Reference
) -> None:
    """Kill 1: resume from memory. Kill 2 with the tier wiped (a reboot): from disk. Kill 3
    with the memory checkpoint torn: it is quarantined, the resume comes from disk. The end
    is bitwise the uninterrupted run's, and the tier is gone."""
    ckpt_dir, log, shm = tmp_path / "ck", tmp_path / "log.jsonl", tmp_path / "shm"
    argv = stalwart_argv(
        "run", "--state-dir", str(tmp_path / "state"), "--ckpt-dir", str(ckpt_dir),
        "--set", "restart.backoff_initial_s=0",
        "--set", "checkpoint.interval.mode=fixed",
        "--set", "checkpoint.interval.fixed_interval_s=0.3",
        "--set", "checkpoint.memory.enabled=true",
        "--set", f"checkpoint.memory.dir={shm}",
        "--set", "checkpoint.memory.fixed_interval_s=0.05",
        "--", sys.executable, str(EXAMPLE), *TINY,
        "--log", str(log), "--out", str(tmp_path / "final.json"),
    )  # fmt: skip
    with (tmp_path / "output.txt").open("w") as output:
        supervisor = subprocess.Popen(
            argv, cwd=tmp_path, env=environment(runtime_dir), stdout=output, stderr=output
        )
        try:
            for attempt, how in enumerate(("kill", "wipe", "tear")):
                wait_for(lambda a=attempt: last_step(log, a) is not None, RUN_S / 4, "a step")
                start = resumed_step(log, attempt)

                def memory_ahead(start: int = start) -> bool:
                    newest = _newest_in(shm)
                    step = int(newest.name.split("-")[1]) if newest is not None else 0
                    return step > max(start, newest_committed(ckpt_dir)) > 0

                wait_for(memory_ahead, RUN_S / 4, f"attempt {attempt}: memory ahead of disk")
                with Journal(tmp_path / "state" / "journal.sqlite") as journal:
                    pid = journal.attempts()[-1].pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)  # nothing is written while the tier is changed
                newest = _newest_in(shm)
                assert newest is not None
                if how == "kill":  # `checkpoints list` shows both tiers
                    state = str(tmp_path / "state")
                    listing = subprocess.run(
                        stalwart_argv("checkpoints", "list", "--state-dir", state),
                        env=environment(runtime_dir), capture_output=True, text=True,
                        timeout=60, check=False,
                    )  # fmt: skip
                    rows = listing.stdout.splitlines()
                    assert any(r.startswith("memory") and newest.name in r for r in rows), rows
                    assert any(r.startswith("disk") for r in rows), listing.stdout
                if how == "wipe":
                    for path in shm.glob("*/*"):
                        shutil.rmtree(path)
                elif how == "tear":
                    data = next(p for p in newest.glob("*.safetensors"))
                    raw = bytearray(data.read_bytes())
                    raw[len(raw) // 2] ^= 0xFF
                    data.write_bytes(bytes(raw))
                os.kill(pid, signal.SIGKILL)
            assert supervisor.wait(timeout=RUN_S) == 0, (tmp_path / "output.txt").read_text()
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait()
    same_summary(json.loads((tmp_path / "final.json").read_text()), reference.summary)
    for row in step_losses(log):
        assert row["loss"] == reference.losses[row["step"]], row
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        resumes = [a.resume_from or "" for a in journal.attempts()]
        quarantined = journal.quarantines()
    tiers = ["memory" if str(shm) in r else "disk" if r else "scratch" for r in resumes]
    assert tiers == ["scratch", "memory", "disk", "disk"], resumes
    assert any(str(shm) in q.source for q in quarantined), quarantined
    assert not shm.exists()  # removed when the job completed
