"""Sealing: make every file under a directory durable and compute its digest in one pass.

The fsyncs run in a helper thread while this one reads and hashes: fsync releases the GIL
and the file is still in the page cache, so the digests cost almost nothing on top of the
writes the checkpoint needs anyway. Files the hashing writer wrote (hashed.py) and nobody
changed since are fsynced the same way but not read: their digests are the writer's.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.hashed import Written
from stalwart.checkpoint.manifest import FileEntry, HashAlgo, path_problem
from stalwart.checkpoint.verify import DEFAULT_CHUNK_BYTES, file_digest


@dataclass(frozen=True)
class Sealed:
    """The files of a directory, fsynced, with their sizes and digests."""

    files: tuple[FileEntry, ...]
    dirs: tuple[str, ...]
    """Subdirectories, deepest first, each to be fsynced after the files in it."""


class SealFailure(Exception):
    """Internal: which file an OSError was about."""

    def __init__(self, file: str | None, error: OSError) -> None:
        super().__init__(file, error)
        self.file = file
        self.error = error


def collect_tree(base: Path) -> tuple[list[str], list[str]]:
    """Relative paths of the regular files and the directories under `base`."""
    files: list[str] = []
    dirs: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        for handle in sorted(os.scandir(directory), key=lambda h: h.name):
            rel = prefix + handle.name
            mode = handle.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                walk(Path(handle.path), rel + "/")
                dirs.append(rel)
            elif stat.S_ISREG(mode):
                files.append(rel)
            else:
                kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
                raise ValueError(f"{rel} is {kind}; a checkpoint holds only files and directories")

    walk(base, "")
    return files, dirs


def seal(
    base: Path,
    algo: HashAlgo,
    ops: FsOps,
    *,
    exclude: frozenset[str] = frozenset(),
    include: Callable[[str], bool] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    known: Mapping[str, Written] | None = None,
) -> Sealed:
    """fsync every file under `base` while computing its digest (two threads, one pass).

    `include` limits it to some of the files (one rank's shards of a sharded checkpoint).
    `known`: files hashed while written; one still as its writer left it is not read.
    Raises ValueError for symlinks or special files, SealFailure for I/O errors.
    """
    files, dirs = collect_tree(base)
    files = [f for f in files if f not in exclude and (include is None or include(f))]
    for rel in files:
        problem = path_problem(rel)
        if problem is not None:
            raise ValueError(f"{rel!r}: {problem}")
    known = known or {}
    sync_error: list[BaseException] = []
    hashing_failed = threading.Event()

    def sync_all() -> None:
        for rel in files:
            if hashing_failed.is_set():
                return
            try:
                ops.fsync_file(base / rel)
            except OSError as exc:
                sync_error.append(SealFailure(rel, exc))
                return
            except BaseException as exc:  # re-raised in the caller's thread
                sync_error.append(exc)
                return

    syncer = threading.Thread(target=sync_all, name="stalwart-ckpt-fsync", daemon=True)
    syncer.start()
    entries = []
    buffer = bytearray(chunk_bytes)
    try:
        for rel in files:
            try:
                written = known.get(rel)
                if written is not None and written.unchanged(os.lstat(base / rel), algo):
                    entries.append(written.entry)
                    continue
                digest, size = file_digest(base / rel, algo, buffer=buffer)
            except OSError as exc:
                raise SealFailure(rel, exc) from exc
            entries.append(FileEntry(path=rel, size_bytes=size, digest=digest))
    except BaseException:
        hashing_failed.set()
        raise
    finally:
        syncer.join()
    if sync_error:
        raise sync_error[0]
    return Sealed(files=tuple(entries), dirs=tuple(dirs))


def parent_dirs(paths: Iterable[str]) -> tuple[str, ...]:
    """The directories that hold the given `/`-separated relative paths, deepest first."""
    dirs = {path.rsplit("/", 1)[0] for path in paths if "/" in path}
    for directory in list(dirs):
        parts = directory.split("/")
        dirs.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    return tuple(sorted(dirs, key=lambda d: (-d.count("/"), d)))


def write_durable(ops: FsOps, path: Path, data: bytes, hook: Callable[[], None] | None) -> None:
    """Create `path` with `data` and fsync it (`hook` runs between the write and the fsync)."""
    fd = ops.create(path)
    try:
        ops.write(fd, data)
        if hook is not None:
            hook()
        ops.fsync(fd)
    finally:
        ops.close(fd)
