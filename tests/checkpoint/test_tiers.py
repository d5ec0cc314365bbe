"""The memory tier's housekeeping (checkpoint/tiers.py): where it is, what fits, what is
kept, which tier a resume comes from, and that it goes away."""

from __future__ import annotations

from pathlib import Path

from stalwart.checkpoint import CheckpointStore, prepare_resume
from stalwart.checkpoint.tiers import (
    covered_by_disk,
    create_memory_dir,
    fit_problem,
    job_memory_dir,
    keep_newest,
    newer_decision,
    remove_memory_dir,
    tier_of,
)
from tests.checkpoint.helpers import flip_byte

MIB = 2**20


def _save(root: Path, step: int) -> Path:
    return CheckpointStore(root).save_bytes(step, {"w.bin": bytes([step % 256]) * 4096}).path


def test_each_job_and_state_dir_has_its_own_tier(tmp_path: Path) -> None:
    a = job_memory_dir(tmp_path, "job/a b", tmp_path / "state1")
    assert a.parent == tmp_path and "/" not in a.name and " " not in a.name
    assert a == job_memory_dir(tmp_path, "job/a b", tmp_path / "state1")  # stable: restarts
    assert a != job_memory_dir(tmp_path, "job/a b", tmp_path / "state2")
    assert job_memory_dir(None, "x", tmp_path).parent == Path("/dev/shm/stalwart")


def test_a_snapshot_that_does_not_fit_is_refused_with_the_figures() -> None:
    assert fit_problem(100 * MIB, 1000 * MIB, 0.25) is None
    problem = fit_problem(300 * MIB, 1000 * MIB, 0.25)
    assert problem is not None
    assert "300 MiB" in problem and "25%" in problem and "max_memory_fraction" in problem


def test_the_tier_keeps_only_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step)
    removed = keep_newest(tmp_path)
    assert sorted(p.name for p in removed) == ["step-000000001", "step-000000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000003"]


def test_resume_takes_the_newer_tier_and_falls_back_when_memory_is_torn(tmp_path: Path) -> None:
    disk, memory = tmp_path / "disk", tmp_path / "memory"
    _save(disk, 10)
    newest = _save(memory, 12)
    chosen = newer_decision(prepare_resume(disk), prepare_resume(memory))
    assert chosen.resume_from is not None and chosen.resume_from.path == newest
    assert tier_of(newest, memory) == "memory" and tier_of(disk / "x", memory) == "disk"
    flip_byte(newest / "w.bin")
    chosen = newer_decision(prepare_resume(disk), prepare_resume(memory))
    assert chosen.resume_from is not None and chosen.resume_from.step == 10
    assert [q.name for q in chosen.quarantined] == ["step-000000012"]  # kept, not deleted
    assert not newest.exists()


def test_an_older_memory_checkpoint_loses_to_the_disk(tmp_path: Path) -> None:
    disk, memory = tmp_path / "disk", tmp_path / "memory"
    _save(memory, 5)
    _save(disk, 8)
    chosen = newer_decision(prepare_resume(disk), prepare_resume(memory))
    assert chosen.resume_from is not None and chosen.resume_from.step == 8


def test_the_tier_is_removed_and_covered_only_by_a_newer_disk(tmp_path: Path) -> None:
    root = tmp_path / "shm"
    memory, disk = create_memory_dir(root / "job-1"), tmp_path / "disk"
    assert (memory.stat().st_mode & 0o777) == 0o700
    _save(memory, 7)
    assert not covered_by_disk(memory, disk)
    _save(disk, 6)
    assert not covered_by_disk(memory, disk)
    _save(disk, 7)
    assert covered_by_disk(memory, disk)
    assert remove_memory_dir(memory)
    assert not root.exists()  # the shared root goes with the last job's tier
    assert remove_memory_dir(memory)  # idempotent
