"""Digests while writing (hashed.py): a commit takes the writer's digests and reads nothing
back; files written other ways, or changed after the hashing writer closed them, are read."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import stalwart.checkpoint.seal as seal_module
from stalwart.checkpoint import (
    CheckpointStore,
    Defect,
    DiskFull,
    FsOps,
    HashAlgo,
    VerifyLevel,
    verify_checkpoint,
)
from stalwart.checkpoint.hashed import PIPELINE_CHUNK_BYTES
from stalwart.checkpoint.verify import file_digest
from tests.checkpoint.helpers import flip_byte

MIB = 1024 * 1024


@pytest.fixture
def read_backs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the commit hashes by reading them (seal's only way to read a file)."""
    seen: list[str] = []
    real: Callable[..., tuple[str, int]] = seal_module.file_digest

    def spy(path: Path, *args: object, **kwargs: object) -> tuple[str, int]:
        seen.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(seal_module, "file_digest", spy)
    return seen


def _payload(size_bytes: int) -> bytes:
    return os.urandom(size_bytes)


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends, page cache included."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_hashed_commit_verifies_and_digests_equal_read_back(tmp_path: Path) -> None:
    big = _payload(2 * PIPELINE_CHUNK_BYTES + 12_345)  # the pipelined path, a short tail
    store = CheckpointStore(tmp_path / "ck")
    with store.begin(7) as tx:
        tx.write_bytes("model.bin", big)
        tx.write_file("shards/0.bin", (b"head", memoryview(big)[:1000], b"", bytearray(b"t")))
        with tx.open_hashed("nested/deep/opt.bin") as out:
            for start in range(0, len(big), 3 * MIB):
                out.write(memoryview(big)[start : start + 3 * MIB])
    assert tx.committed is not None
    path = tx.committed.path
    verdict = verify_checkpoint(path, VerifyLevel.FULL)
    assert verdict.intact, verdict.reason
    entries = {entry.path: entry for entry in tx.committed.manifest.files}
    assert set(entries) == {"model.bin", "shards/0.bin", "nested/deep/opt.bin"}
    for rel, entry in entries.items():
        digest, size = file_digest(path / rel, HashAlgo.XXH3_128)
        assert (entry.digest, entry.size_bytes) == (digest, size), rel
    assert (path / "shards/0.bin").read_bytes() == b"head" + big[:1000] + b"t"
    assert (path / "nested/deep/opt.bin").read_bytes() == big


def test_hashed_commit_reads_nothing_back(tmp_path: Path, read_backs: list[str]) -> None:
    data = _payload(32 * MIB)
    store = CheckpointStore(tmp_path / "ck")
    tx = store.begin(1)
    tx.write_bytes("model.bin", data)
    tx.write_file("optim.bin", (data[: 5 * MIB], data[5 * MIB : 9 * MIB]))
    before = _rchar()
    committed = tx.commit()
    read_bytes = _rchar() - before
    assert read_backs == []
    assert read_bytes < MIB, f"the commit read {read_bytes} bytes"  # /proc/self/io itself
    assert committed.manifest.total_bytes == 41 * MIB
    assert verify_checkpoint(committed.path, VerifyLevel.FULL).intact


def test_files_written_other_ways_are_read_back(tmp_path: Path, read_backs: list[str]) -> None:
    store = CheckpointStore(tmp_path / "ck")
    with store.begin(1) as tx:
        tx.write_bytes("hashed.bin", b"h" * 1000)
        tx.path("plain.bin").write_bytes(b"p" * 1000)
    assert read_backs == ["plain.bin"]
    assert tx.committed is not None
    assert verify_checkpoint(tx.committed.path, VerifyLevel.FULL).intact


def test_file_changed_after_its_hashed_write_is_read_back(
    tmp_path: Path, read_backs: list[str]
) -> None:
    store = CheckpointStore(tmp_path / "ck")
    with store.begin(1) as tx:
        target = tx.write_bytes("model.bin", b"first " * 1000)
        with open(target, "ab") as handle:  # written again another way
            handle.write(b"appended")
    assert read_backs == ["model.bin"]
    assert tx.committed is not None
    verdict = verify_checkpoint(tx.committed.path, VerifyLevel.FULL)
    assert verdict.intact, verdict.reason


def test_flipped_byte_after_hashed_commit_is_caught(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck")
    committed = store.save_bytes(1, {"model.bin": _payload(3 * MIB), "b.bin": b"x" * 100})
    assert verify_checkpoint(committed.path, VerifyLevel.FULL).intact
    flip_byte(committed.path / "model.bin", offset=2 * MIB + 17)
    verdict = verify_checkpoint(committed.path, VerifyLevel.FULL)
    assert not verdict.intact
    assert verdict.problem is not None and verdict.problem.file == "model.bin"
    assert verdict.problem.defect is Defect.DIGEST_MISMATCH


def test_sha256_store_hashes_while_writing(tmp_path: Path, read_backs: list[str]) -> None:
    store = CheckpointStore(tmp_path / "ck", hash_algo=HashAlgo.SHA256)
    committed = store.save_bytes(1, {"model.bin": _payload(PIPELINE_CHUNK_BYTES + 1)})
    assert read_backs == []
    (entry,) = committed.manifest.files
    assert entry.digest == file_digest(committed.path / "model.bin", HashAlgo.SHA256)[0]
    assert verify_checkpoint(committed.path, VerifyLevel.FULL).intact


class _FullAfter(FsOps):
    """A disk that fills up after `limit_bytes` of file data."""

    def __init__(self, limit_bytes: int) -> None:
        self.left_bytes = limit_bytes

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes > self.left_bytes:
            super().write(fd, view[: self.left_bytes])
            self.left_bytes = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left_bytes -= view.nbytes
        super().write(fd, view)


def test_disk_full_inside_a_pipelined_write(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", ops=_FullAfter(3 * PIPELINE_CHUNK_BYTES // 2))
    threads_before = set(threading.enumerate())
    with pytest.raises(DiskFull) as caught:
        store.save_bytes(1, {"model.bin": _payload(4 * PIPELINE_CHUNK_BYTES)})
    assert caught.value.file == "model.bin"
    assert set(threading.enumerate()) <= threads_before  # the writer thread has ended
    assert list((tmp_path / "ck").iterdir()) == []  # staging removed, nothing committed
