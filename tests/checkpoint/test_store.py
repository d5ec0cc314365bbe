"""The atomic commit: what a save leaves on disk, on success, on error and when killed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stalwart.checkpoint import (
    CheckpointState,
    CheckpointStore,
    CommitFailed,
    CommitStage,
    HashAlgo,
    StepExists,
    VerifyLevel,
    find_newest_intact,
    prepare_resume,
    scan,
    verify_checkpoint,
)
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import MANIFEST_NAME
from stalwart.checkpoint.manifest import FileEntry
from stalwart.checkpoint.seal import seal
from stalwart.checkpoint.store import Transaction
from stalwart.clock import FakeClock
from tests.checkpoint.helpers import kill_at, save


def test_commit_writes_manifest_format_1(tmp_path: Path) -> None:
    clock = FakeClock()
    store = CheckpointStore(tmp_path / "ck", run_id="run-1", attempt=2, clock=clock)
    with store.begin(1234, meta={"loss": 0.5}) as tx:
        tx.path("model.pt").write_bytes(b"weights")
        tx.write_bytes("nested/opt.bin", b"optimizer")
    committed = tx.committed
    assert committed is not None
    assert committed.path == tmp_path / "ck" / "step-000001234"
    document = json.loads((committed.path / MANIFEST_NAME).read_bytes())
    assert document == {
        "format": 1,
        "step": 1234,
        "created_unix": clock.wall(),
        "run_id": "run-1",
        "attempt": 2,
        "hash": "xxh3_128",
        "files": [
            {"path": "model.pt", "bytes": 7, "digest": document["files"][0]["digest"]},
            {"path": "nested/opt.bin", "bytes": 9, "digest": document["files"][1]["digest"]},
        ],
        "meta": {"loss": 0.5},
    }
    assert verify_checkpoint(committed.path).intact
    assert [e.name for e in scan(tmp_path / "ck").staging] == []


def test_sha256_is_selectable(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, hash_algo=HashAlgo.SHA256)
    committed = store.save_bytes(1, {"a": b"abc"})
    assert committed.manifest.files[0].digest == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert verify_checkpoint(committed.path).intact


def _failing_save(store: CheckpointStore) -> None:
    with store.begin(5) as tx:
        tx.write_bytes("model.pt", b"half")
        raise RuntimeError("trainer failed")


def test_error_inside_the_block_removes_staging(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="trainer failed"):
        _failing_save(CheckpointStore(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_committed_step_is_never_replaced(tmp_path: Path) -> None:
    save(tmp_path, 7)
    with pytest.raises(StepExists, match="step-000000007"):
        CheckpointStore(tmp_path).save_bytes(7, {"model.bin": b"other"})
    assert verify_checkpoint(tmp_path / "step-000000007").intact
    assert [e.name for e in scan(tmp_path).staging] == []


def _save_with_symlink(store: CheckpointStore, target: Path) -> None:
    with store.begin(1) as tx:
        tx.write_bytes("model.pt", b"x")
        os.symlink(target, tx.dir / "link")


def test_symlink_in_staging_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"outside")
    with pytest.raises(CommitFailed, match="symlink"):
        _save_with_symlink(CheckpointStore(tmp_path / "ck"), tmp_path / "secret")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == []


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a//b", MANIFEST_NAME, ""])
def test_unsafe_names_are_refused(tmp_path: Path, bad: str) -> None:
    with CheckpointStore(tmp_path).begin(1) as tx:
        with pytest.raises(ValueError, match="cannot write"):
            tx.path(bad)
        tx.write_bytes("ok", b"1")


def test_commit_directory_renames_in_place(tmp_path: Path) -> None:
    src = tmp_path / "written-elsewhere"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "shard.distcp").write_bytes(b"shard")
    (src / ".metadata").write_bytes(b"meta")
    committed = CheckpointStore(tmp_path / "ck").commit_directory(src, 3)
    assert not src.exists()
    assert sorted(f.path for f in committed.manifest.files) == [".metadata", "sub/shard.distcp"]
    assert verify_checkpoint(committed.path).intact


def test_commit_directory_failure_leaves_source(tmp_path: Path) -> None:
    save(tmp_path / "ck", 3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    with pytest.raises(StepExists):
        CheckpointStore(tmp_path / "ck").commit_directory(src, 3)
    assert sorted(p.name for p in src.iterdir()) == ["a"]


def _sealed_by_writers(tx: Transaction, files: dict[str, bytes]) -> list[FileEntry]:
    """Write `files` and seal each as its writer (one rank of a sharded save) would."""
    for relpath, data in files.items():
        tx.write_bytes(relpath, data)
    return [
        entry
        for relpath in files
        for entry in seal(tx.dir, HashAlgo.XXH3_128, FsOps(), include={relpath}.__contains__).files
    ]


def test_commit_sealed_covers_what_every_writer_sealed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    tx = store.begin(7)
    entries = _sealed_by_writers(tx, {".metadata": b"index", "__0_0.distcp": b"a", "r/1": b"bb"})
    committed = tx.commit_sealed(entries)
    assert sorted(e.path for e in committed.manifest.files) == [".metadata", "__0_0.distcp", "r/1"]
    assert verify_checkpoint(committed.path, VerifyLevel.FULL).intact


@pytest.mark.parametrize("flaw", ["unsealed", "missing", "resized"])
def test_commit_sealed_refuses_a_listing_that_is_not_the_directory(
    tmp_path: Path, flaw: str
) -> None:
    store = CheckpointStore(tmp_path)
    tx = store.begin(7)
    entries = _sealed_by_writers(tx, {"__0_0.distcp": b"a", "__1_0.distcp": b"b"})
    if flaw == "unsealed":
        tx.write_bytes("__2_0.distcp", b"nobody sealed this")
    elif flaw == "missing":
        os.unlink(tx.dir / "__1_0.distcp")
    else:
        (tx.dir / "__1_0.distcp").write_bytes(b"longer now")
    with pytest.raises(CommitFailed):
        tx.commit_sealed(entries)
    assert not (tmp_path / "step-000000007").exists()
    assert not list(tmp_path.glob(".staging-*"))


def test_stage_hooks_run_in_commit_order(tmp_path: Path) -> None:
    seen: list[CommitStage] = []
    CheckpointStore(tmp_path, on_stage=seen.append).save_bytes(1, {"a": b"a"})
    assert seen == list(CommitStage)


KILL_POINTS = ["partial_write"] + [s.value for s in CommitStage if s is not CommitStage.DURABLE]
VISIBLE_AFTER_KILL = {CommitStage.RENAMED.value}


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", KILL_POINTS)
def test_writer_killed_inside_commit_leaves_previous_or_new(tmp_path: Path, stop_at: str) -> None:
    root = tmp_path / "ck"
    previous = save(root, 100)
    kill_at(root, 200, 300_000, stop_at)
    decision = prepare_resume(root)
    assert decision.resume_from is not None
    expected = "step-000000200" if stop_at in VISIBLE_AFTER_KILL else previous.name
    assert decision.resume_from.name == expected
    assert decision.quarantined == ()  # nothing partial ever got a committed name
    assert len(decision.removed_leftovers) == (0 if stop_at in VISIBLE_AFTER_KILL else 1)
    listing = scan(root)
    assert listing.staging == ()
    for entry in listing.managed:
        assert verify_checkpoint(entry.path, VerifyLevel.FULL).intact, entry.name
    assert find_newest_intact(root).newest is not None
    assert decision.resume_from.state is CheckpointState.INTACT
