"""The checkpoint store under the real supervisor: verified resume, quarantine, retention,
observation of foreign checkpoints, and `stalwart checkpoints`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stalwart.journal import Journal
from tests.supervised import environment, records, stalwart_argv

TRAINERS = Path(__file__).parent / "trainers"


def _run(tmp_path: Path, runtime_dir: Path, options: list[str], trainer: list[str]):  # type: ignore[no-untyped-def]
    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        "restart.backoff_initial_s=0",
        *options,
        "--",
        sys.executable,
        *trainer,
    )
    return subprocess.run(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stalwart_argv(*args), capture_output=True, text=True, timeout=60, check=False
    )


def test_corrupt_newest_is_skipped_and_quarantined(tmp_path: Path, runtime_dir: Path) -> None:
    record = tmp_path / "a.jsonl"
    result = _run(
        tmp_path,
        runtime_dir,
        [],
        [str(TRAINERS / "storer.py"), "--record", str(record), "--corrupt-newest"],
    )
    assert result.returncode == 0, result.stderr
    first, second = records(record)
    assert first["resume_from"] == ""
    assert Path(second["resume_from"]).name == "step-000000002"  # step 3 was corrupted
    quarantined = list((tmp_path / "ck" / ".quarantine").iterdir())
    assert [q.name for q in quarantined] == ["step-000000003-corrupt"]
    assert "quarantined checkpoint step-000000003" in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (moved,) = journal.quarantines()
        assert moved.name == "step-000000003" and moved.reason == "corrupt"
        attempts = journal.attempts()
        assert attempts[1].resume_from == second["resume_from"]
        saves = journal.checkpoints("default")
        assert [c.step for c in saves] == [1, 2, 3, 3, 4, 5]
        assert all(c.source == "trainer" and c.stall_s is not None for c in saves)
    listing = _cli("checkpoints", "list", "--state-dir", str(tmp_path / "state"))
    assert listing.returncode == 0, listing.stderr
    assert "step-000000005" in listing.stdout and "quarantined" in listing.stdout
    assert _cli("checkpoints", "verify", "--dir", str(tmp_path / "ck"), "--full").returncode == 0
    bad = tmp_path / "ck" / "step-000000005" / "weights.bin"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")
    verify = _cli("checkpoints", "verify", "--dir", str(tmp_path / "ck"), "--full")
    assert verify.returncode == 1 and "1 corrupt" in verify.stdout


def test_retention_prunes_in_the_background(tmp_path: Path, runtime_dir: Path) -> None:
    record = tmp_path / "a.jsonl"
    result = _run(
        tmp_path,
        runtime_dir,
        ["--set", "checkpoint.keep_last=2"],
        [
            str(TRAINERS / "storer.py"),
            "--record",
            str(record),
            "--saves",
            "6",
            "--wait-for-at-most",
            "2",
        ],
    )
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in (tmp_path / "ck").glob("step-*"))
    assert left == ["step-000000005", "step-000000006"]
    assert "pruned checkpoint step-000000001" in result.stderr


FOREIGN = """
import os, sys, time, torch
from pathlib import Path
ckpt = Path(os.environ["STALWART_CKPT_DIR"])
for i in range(2):
    torch.save({"w": torch.arange(1000.0) * i, "step": i}, ckpt / f"model-{i}.pt")
    time.sleep(0.5)
deadline = time.monotonic() + 30
while not (ckpt / "model-1.pt.MANIFEST.json").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_foreign_checkpoints_are_observed_measured_and_adopted(
    tmp_path: Path, runtime_dir: Path
) -> None:
    result = _run(
        tmp_path,
        runtime_dir,
        ["--set", "checkpoint.foreign_globs=['*.pt']", "--set", "checkpoint.quiescence_s=0.2"],
        ["-c", FOREIGN],
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ck" / "model-1.pt.MANIFEST.json").exists()
    assert "observed foreign checkpoint model-0.pt" in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        observed = [c for c in journal.checkpoints("default") if c.source == "observed"]
    assert {Path(c.path or "").name for c in observed} >= {"model-0.pt", "model-1.pt"}
    assert all(c.stall_s is not None and c.size_bytes for c in observed)
    manifest = json.loads((tmp_path / "ck" / "model-1.pt.MANIFEST.json").read_text())
    assert manifest["format"] == 1


def test_poison_checkpoint_is_rolled_back_and_training_completes(
    tmp_path: Path, runtime_dir: Path
) -> None:
    record = tmp_path / "a.jsonl"
    result = _run(
        tmp_path,
        runtime_dir,
        ["--set", "restart.poison_after_failures=2"],
        [
            str(TRAINERS / "storer.py"),
            "--record",
            str(record),
            "--saves",
            "10",
            "--poison-step",
            "3",
            "--total",
            "6",
        ],
    )
    assert result.returncode == 0, result.stderr
    resumes = [Path(r["resume_from"]).name if r["resume_from"] else "" for r in records(record)]
    # attempt 0 wrote step 3 as poison; two failures resuming from it; then back to step 2
    assert resumes == ["", "step-000000003", "step-000000003", "step-000000002"]
    assert "checkpoint step-000000003 is poison" in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (moved,) = journal.quarantines()
        assert (moved.name, moved.reason) == ("step-000000003", "poison")
        assert "rolled back from poison checkpoint step-000000003" in (
            journal.attempts()[2].decision or ""
        )
    assert (tmp_path / "ck" / ".quarantine" / "step-000000003-poison").is_dir()


def test_rollbacks_exhausted_gives_up_naming_the_checkpoints(
    tmp_path: Path, runtime_dir: Path
) -> None:
    record = tmp_path / "a.jsonl"
    result = _run(
        tmp_path,
        runtime_dir,
        ["--set", "restart.poison_after_failures=1", "--set", "restart.max_rollbacks=0"],
        [
            str(TRAINERS / "storer.py"),
            "--record",
            str(record),
            "--saves",
            "10",
            "--poison-step",
            "3",
        ],
    )
    assert result.returncode == 3
    assert "checkpoints tried: step-000000003" in result.stderr


CHAOS = "import time; time.sleep(4)"


def test_chaos_kills_are_injected_and_spend_no_budget(tmp_path: Path, runtime_dir: Path) -> None:
    result = _run(
        tmp_path,
        runtime_dir,
        [
            "--chaos",
            "--max-restarts",
            "0",
            "--set",
            "chaos.kill_after_min_s=0.3",
            "--set",
            "chaos.kill_after_max_s=0.6",
            "--set",
            "chaos.max_kills=3",
            "--set",
            "chaos.seed=7",
        ],
        ["-c", CHAOS],
    )
    assert result.returncode == 0, result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
    assert [a.kind for a in attempts] == ["UNKNOWN"] * 3 + ["COMPLETED"]
    assert all("injected by chaos" in (a.reason or "") for a in attempts[:3])
    assert result.stderr.count("chaos: sending SIGKILL") == 3
