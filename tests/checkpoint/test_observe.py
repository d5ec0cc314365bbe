"""Observation of the checkpoint directory and adoption of foreign checkpoints."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from stalwart.checkpoint import (
    CheckpointInvalid,
    CheckpointObserver,
    CheckpointStore,
    FormatStatus,
    VerifiedBy,
    WriteKind,
    WriteObserved,
    WriteTracker,
    adopt,
    find_newest_intact,
    verify_checkpoint,
)
from stalwart.checkpoint.observe import _ours
from stalwart.clock import FakeClock
from tests.checkpoint.foreign import hf_checkpoint, torch_pt
from tests.checkpoint.helpers import flip_byte, truncate

WAIT_S = 20.0
"""Deadline for an observation to arrive; normally it takes quiescence_s plus milliseconds."""


def test_tracker_measures_first_event_to_last_close_write() -> None:
    clock = FakeClock(start_s=100.0)
    tracker = WriteTracker(quiescence_s=2.0)
    tracker.record("model.pt", clock.monotonic(), close_write=False)
    clock.advance(3.0)
    tracker.record("model.pt", clock.monotonic(), close_write=True)
    clock.advance(0.5)
    tracker.record("model.pt", clock.monotonic(), close_write=False)  # a late metadata touch
    assert tracker.next_due_s() == 105.5
    clock.advance(1.9)
    assert tracker.settled(clock.monotonic()) == []
    clock.advance(0.1)
    [done] = tracker.settled(clock.monotonic())
    assert (done.first_event_s, done.last_close_write_s, done.last_event_s) == (100.0, 103.0, 103.5)
    assert len(tracker) == 0


def test_tracker_follows_a_rename_as_one_write() -> None:
    tracker = WriteTracker(quiescence_s=1.0)
    tracker.record(".staging-step-000000005-9", 10.0, close_write=True)
    tracker.rename(".staging-step-000000005-9", "step-000000005", 12.0)
    [done] = tracker.settled(13.0)
    assert (done.name, done.first_event_s, done.last_close_write_s) == (
        "step-000000005",
        10.0,
        12.0,
    )


@pytest.mark.parametrize(
    ("top", "rest", "ours"),
    [
        (".quarantine", "x", True),
        (".deleting-step-000000001-5", "", True),
        ("last.ckpt.MANIFEST.json", "", True),
        (".last.ckpt.MANIFEST.json.tmp-77", "", True),
        ("checkpoint-5", "MANIFEST.json", True),
        ("checkpoint-5", ".MANIFEST.json.tmp-77", True),
        (".staging-step-000000001-5", "MANIFEST.json", False),
        ("checkpoint-5", "model.safetensors", False),
    ],
)
def test_own_writes_are_not_activity(top: str, rest: str, ours: bool) -> None:
    assert _ours(top, rest) is ours


def _next(reports: queue.Queue[WriteObserved]) -> WriteObserved:
    return reports.get(timeout=WAIT_S)


@pytest.mark.slow
def test_observer_reports_foreign_and_managed_writes(tmp_path: Path) -> None:
    reports: queue.Queue[WriteObserved] = queue.Queue()
    observer = CheckpointObserver(
        tmp_path, reports.put, foreign_globs=("*.pt", "checkpoint-*"), quiescence_s=0.5
    )
    with observer:
        path = torch_pt(tmp_path / "model_100.pt", step=100)
        foreign = _next(reports)
        assert (foreign.name, foreign.kind) == ("model_100.pt", WriteKind.FOREIGN)
        assert foreign.size_bytes == path.stat().st_size
        assert foreign.duration_s >= 0.0
        assert foreign.settled_s - foreign.first_event_s >= 0.5
        assert foreign.format is not None and foreign.format.status is FormatStatus.VALID

        committed = CheckpointStore(tmp_path).save_bytes(200, {"model.bin": b"m" * 4096})
        managed = _next(reports)
        assert (managed.name, managed.kind) == ("step-000000200", WriteKind.MANAGED)
        assert managed.size_bytes >= committed.manifest.total_bytes
        assert managed.format is None

        (tmp_path / "notes.txt").write_text("not a checkpoint")  # matches no glob: ignored
        hf_checkpoint(tmp_path / "checkpoint-300", step=300)
        directory = _next(reports)
        assert directory.name == "checkpoint-300"
        assert directory.format is not None and directory.format.valid
    assert reports.empty()


def test_adopt_writes_a_manifest_beside_a_file(tmp_path: Path) -> None:
    path = torch_pt(tmp_path / "model_100.pt", step=100)
    adopted = adopt(path, run_id="r")
    assert adopted.manifest_path == tmp_path / "model_100.pt.MANIFEST.json"
    assert [f.path for f in adopted.manifest.files] == ["model_100.pt"]
    assert adopted.manifest.step == 100
    assert adopted.manifest.meta["adopted"] == {"format": "torch_zip"}
    assert adopt(path).manifest == adopted.manifest  # idempotent
    found = find_newest_intact(tmp_path, foreign_globs=("*.pt",))
    assert found.newest is not None
    assert found.newest.verified_by is VerifiedBy.MANIFEST

    flip_byte(path, offset=path.stat().st_size - 200)  # any byte, the digest covers all
    assert not verify_checkpoint(path).intact


def test_adopt_directory_puts_the_manifest_inside(tmp_path: Path) -> None:
    path = hf_checkpoint(tmp_path / "checkpoint-500", step=500)
    adopted = adopt(path)
    assert adopted.manifest_path == path / "MANIFEST.json"
    assert adopted.manifest.step == 500
    assert "trainer_state.json" in {f.path for f in adopted.manifest.files}
    assert verify_checkpoint(path).intact


def test_adopt_refuses_an_invalid_checkpoint(tmp_path: Path) -> None:
    path = torch_pt(tmp_path / "model_1.pt")
    truncate(path)
    with pytest.raises(CheckpointInvalid, match=r"model_1\.pt"):
        adopt(path)
    assert not (tmp_path / "model_1.pt.MANIFEST.json").exists()
