"""Checkpoint store costs, each as a ratio against a baseline measured in the same run.

1. Atomic commit of one SIZE checkpoint written with `save_bytes` (staging, the file hashed
   as it is written, fsync of each file, manifest with xxh3-128 digests, fsyncs, rename,
   parent fsync) vs a raw write + fsync of the same bytes into one file, written in the
   same 4 MiB write calls. Goal: commit throughput >= 0.97 of raw. Also printed: the bytes
   the commit read (/proc/self/io rchar), which is ~0 now that it never reads files back.
2. Full verification (streaming digests) vs a plain sequential read of the same files,
   both cold-ish. Goal: >= 0.95 of the read's throughput.
   Page cache: dropping caches needs /proc/sys/vm/drop_caches (not writable in a
   container), so each file is fsynced (clean) and evicted with
   posix_fadvise(POSIX_FADV_DONTNEED) before every timed read. The kernel may keep
   some pages, and a virtual disk may have its own cache below: "cold-ish".
3. Discovery of the newest intact checkpoint among N (default 1,000) with a warm
   verification cache (what a supervisor restart sees). Goal: < 50 ms.

Rounds alternate which of baseline and subject goes first; medians are reported.

    .venv/bin/python bench/checkpoint.py [--size-mib 512] [--rounds 5] [--verify-rounds 9]
                                         [--checkpoints 1000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from stalwart.checkpoint import (
    CheckpointStore,
    FsOps,
    MemoryVerifyCache,
    VerifyLevel,
    find_newest_intact,
    prepare_resume,
    verify_checkpoint,
)
from stalwart.checkpoint.hashed import PIPELINE_CHUNK_BYTES
from stalwart.checkpoint.verify import DEFAULT_CHUNK_BYTES

MIB = 1024 * 1024


def raw_write(path: Path, data: bytes) -> None:
    """Write + fsync in the write calls the hashing writer makes (no chunking advantage)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        for start in range(0, len(view), PIPELINE_CHUNK_BYTES):
            FsOps().write(fd, view[start : start + PIPELINE_CHUNK_BYTES])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes_so_far() -> int:
    """This process's bytes read through read(2) and friends, page cache included."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def evict(paths: Iterable[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read(paths: Iterable[Path]) -> int:
    """Read files the way verification does (same chunk size), without hashing."""
    buffer = bytearray(DEFAULT_CHUNK_BYTES)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while got := handle.readinto(buffer):
                total += got
    return total


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_commit(work: Path, data: bytes, rounds: int) -> tuple[float, float, int]:
    """Median seconds of (raw write + fsync, atomic commit) of `data`, alternating order,
    and the most bytes one commit read (the hashing writer's digests: none read back)."""
    raw_s, commit_s = [], []
    read_back = 0
    store = CheckpointStore(work / "ck")
    for round_index in range(rounds):
        step = round_index + 1
        order = ("raw", "commit") if round_index % 2 == 0 else ("commit", "raw")
        for what in order:
            os.sync()  # start each from an empty writeback queue
            if what == "raw":
                raw_s.append(timed(lambda: raw_write(work / "raw.bin", data)))
            else:
                before = read_bytes_so_far()
                commit_s.append(timed(lambda s=step: store.save_bytes(s, {"model.bin": data})))  # type: ignore[misc]
                read_back = max(read_back, read_bytes_so_far() - before)
        (work / "raw.bin").unlink()
        if round_index < rounds - 1:
            shutil.rmtree(work / "ck" / f"step-{step:09d}")
    return statistics.median(raw_s), statistics.median(commit_s), read_back


def bench_verify(checkpoint: Path, rounds: int) -> tuple[float, float, float, float]:
    """Median seconds of (cold read, cold full verify, warm read, warm full verify)."""
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    cold_read, cold_verify, warm_read, warm_verify = [], [], [], []

    def full_verify() -> None:
        verdict = verify_checkpoint(checkpoint, VerifyLevel.FULL)
        assert verdict.intact, verdict.reason

    for round_index in range(rounds):
        # Alternate which goes first: the virtual disk's own cache favours the second.
        order = ("read", "verify") if round_index % 2 == 0 else ("verify", "read")
        for what in order:
            evict(files)
            if what == "read":
                cold_read.append(timed(lambda: sequential_read(files)))
            else:
                cold_verify.append(timed(full_verify))
        warm_read.append(timed(lambda: sequential_read(files)))
        warm_verify.append(timed(full_verify))
    return (
        statistics.median(cold_read),
        statistics.median(cold_verify),
        statistics.median(warm_read),
        statistics.median(warm_verify),
    )


class _NoSync(FsOps):
    """Setting up 1,000 tiny checkpoints needs no durability."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_file(self, path: Path) -> None:
        pass

    def fsync_dir(self, path: Path) -> None:
        pass


def bench_discovery(work: Path, count: int, repeats: int = 20) -> dict[str, float]:
    root = work / "many"
    store = CheckpointStore(root, ops=_NoSync())
    for step in range(1, count + 1):
        store.save_bytes(step * 10, {"model.bin": b"w" * 4096, "optim.bin": b"o" * 1024})
    cache = MemoryVerifyCache()
    cold_s = timed(lambda: find_newest_intact(root, cache=cache))
    warm = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = find_newest_intact(root, cache=cache)
        warm.append(time.perf_counter() - started)
        assert found.newest is not None and found.newest.cached
    resume = [timed(lambda: prepare_resume(root, cache=cache)) for _ in range(repeats)]
    return {
        "cold_s": cold_s,
        "warm_p50_s": statistics.median(warm),
        "warm_max_s": max(warm),
        "resume_p50_s": statistics.median(resume),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="checkpoint size (MiB)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of raw/commit")
    parser.add_argument("--verify-rounds", type=int, default=9, help="rounds of read/verify")
    parser.add_argument("--checkpoints", type=int, default=1000, help="for discovery")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stalwart-ckpt-bench-", dir=args.dir))
    try:
        size = args.size_mib * MIB
        data = os.urandom(size)
        raw_s, commit_s, read_back = bench_commit(work, data, args.rounds)
        del data
        last = sorted((work / "ck").iterdir())[-1]
        cold_read_s, cold_verify_s, warm_read_s, warm_verify_s = bench_verify(
            last, args.verify_rounds
        )
        shutil.rmtree(work / "ck")
        discovery = bench_discovery(work, args.checkpoints)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(seconds: float) -> str:
        return f"{size / MIB / seconds:8.0f} MiB/s ({seconds * 1000:7.1f} ms)"

    print(
        f"checkpoint size {args.size_mib} MiB, medians of {args.rounds} commit rounds and "
        f"{args.verify_rounds} read/verify rounds"
    )
    print(f"raw write+fsync          {rate(raw_s)}")
    print(f"atomic commit            {rate(commit_s)}")
    print(f"  commit/raw throughput  {raw_s / commit_s:.2f}  (goal >= 0.97)")
    print(f"  bytes read by a commit {read_back:8d}  (of {size} written; hashed as written)")
    print(f"sequential read, cold    {rate(cold_read_s)}")
    print(f"full verify, cold        {rate(cold_verify_s)}")
    print(f"  verify/read throughput {cold_read_s / cold_verify_s:.2f}  (goal >= 0.95)")
    print(f"sequential read, warm    {rate(warm_read_s)}")
    print(f"full verify, warm        {rate(warm_verify_s)}")
    print(f"  verify/read throughput {warm_read_s / warm_verify_s:.2f}  (page cache, for context)")
    print(f"discovery among {args.checkpoints} checkpoints, newest intact:")
    print(f"  cold cache (hashes the newest)  {discovery['cold_s'] * 1000:6.2f} ms")
    print(
        f"  warm cache p50                  {discovery['warm_p50_s'] * 1000:6.2f} ms  (goal < 50)"
    )
    print(f"  warm cache max                  {discovery['warm_max_s'] * 1000:6.2f} ms")
    print(f"  prepare_resume p50 (warm)       {discovery['resume_p50_s'] * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
