"""Verification of a checkpoint against its manifest.

Quick: the manifest parses, every listed file exists as a regular file reached without
symlinks, with the listed size. Full: quick, plus every file's digest, read in fixed-size
chunks (never a whole file in memory) with sequential read-ahead.

A checkpoint is a directory with MANIFEST.json inside, or (an adopted foreign file)
a file with `<name>.MANIFEST.json` beside it that lists exactly that file.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from stalwart.checkpoint.errors import CheckpointInvalid, Defect
from stalwart.checkpoint.layout import MANIFEST_NAME, adopted_manifest_path
from stalwart.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    FileEntry,
    HashAlgo,
    Manifest,
    ManifestError,
    parse_manifest,
)

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
"""Read size for digests: large enough for full disk throughput, small enough to not matter."""


class VerifyLevel(enum.Enum):
    QUICK = "quick"
    FULL = "full"


class CacheKey(NamedTuple):
    """What a verification result is cached under; any rewrite of a file changes it.

    `mtime_ns` is the newest mtime of the manifest and the listed files, `size_bytes` their
    total size: a truncated, extended or rewritten file misses the cache. Silent bit rot
    keeps the mtime, which is why `verify --full` ignores the cache.
    """

    name: str
    mtime_ns: int
    size_bytes: int


@dataclass(frozen=True)
class Site:
    """Where a checkpoint's manifest is and what its paths are relative to."""

    base: Path
    manifest: Path
    only: str | None
    """For an adopted file: the one name the manifest must list."""


def site_of(path: Path) -> Site:
    if path.is_dir() and not path.is_symlink():
        return Site(base=path, manifest=path / MANIFEST_NAME, only=None)
    return Site(base=path.parent, manifest=adopted_manifest_path(path), only=path.name)


def has_manifest(path: Path) -> bool:
    return os.path.lexists(site_of(path).manifest)


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one checkpoint."""

    name: str
    path: Path
    level: VerifyLevel
    problem: CheckpointInvalid | None
    manifest: Manifest | None
    key: CacheKey | None

    @property
    def intact(self) -> bool:
        return self.problem is None

    @property
    def reason(self) -> str:
        return "intact" if self.problem is None else self.problem.reason


def read_manifest(path: Path, *, name: str | None = None) -> tuple[Manifest, os.stat_result]:
    """The parsed manifest of the checkpoint at `path`, or CheckpointInvalid saying why not."""
    name = name or path.name
    site = site_of(path)
    shown = site.manifest.name
    try:
        st = os.lstat(site.manifest)
    except FileNotFoundError:
        raise CheckpointInvalid(name, shown, Defect.MANIFEST_MISSING, "no manifest") from None
    if stat.S_ISLNK(st.st_mode):
        raise CheckpointInvalid(name, shown, Defect.SYMLINK, "the manifest is a symlink")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointInvalid(name, shown, Defect.NOT_A_FILE, "the manifest is not a file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise CheckpointInvalid(
            name, shown, Defect.LIMIT_EXCEEDED, f"{st.st_size} bytes > {MAX_MANIFEST_BYTES}"
        )
    try:
        fd = os.open(site.manifest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            raw = os.read(fd, MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CheckpointInvalid(name, shown, Defect.UNREADABLE, str(exc)) from None
    reserved = (MANIFEST_NAME,) if site.only is None else (shown,)
    try:
        manifest = parse_manifest(raw, reserved=reserved)
    except ManifestError as exc:
        raise CheckpointInvalid(name, shown, Defect.MANIFEST_INVALID, str(exc)) from None
    if site.only is not None and [f.path for f in manifest.files] != [site.only]:
        raise CheckpointInvalid(
            name, shown, Defect.MANIFEST_INVALID, f"must list exactly {site.only!r}"
        )
    return manifest, st


def _lstat_listed(base: Path, entry: FileEntry, name: str, dirs_ok: set[str]) -> os.stat_result:
    """lstat a listed file, refusing symlinks anywhere on the way (no escape from `base`)."""
    parts = entry.path.split("/")
    for depth in range(1, len(parts)):
        prefix = "/".join(parts[:depth])
        if prefix in dirs_ok:
            continue
        try:
            st = os.lstat(base / prefix)
        except FileNotFoundError:
            raise CheckpointInvalid(name, entry.path, Defect.FILE_MISSING, "not found") from None
        if stat.S_ISLNK(st.st_mode):
            raise CheckpointInvalid(
                name, entry.path, Defect.SYMLINK, f"{prefix} is a symlink (could leave it)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise CheckpointInvalid(name, entry.path, Defect.FILE_MISSING, f"{prefix} is no dir")
        dirs_ok.add(prefix)
    try:
        st = os.lstat(base / entry.path)
    except FileNotFoundError:
        raise CheckpointInvalid(name, entry.path, Defect.FILE_MISSING, "not found") from None
    if stat.S_ISLNK(st.st_mode):
        raise CheckpointInvalid(name, entry.path, Defect.SYMLINK, "is a symlink")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointInvalid(name, entry.path, Defect.NOT_A_FILE, "is not a regular file")
    if st.st_size != entry.size_bytes:
        raise CheckpointInvalid(
            name,
            entry.path,
            Defect.SIZE_MISMATCH,
            f"{st.st_size} bytes on disk, manifest says {entry.size_bytes}",
        )
    return st


def quick_check(path: Path, *, name: str | None = None) -> tuple[Manifest, CacheKey]:
    """Manifest parses, files exist with their sizes, nothing escapes; raises CheckpointInvalid."""
    name = name or path.name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointInvalid(name, None, Defect.FILE_MISSING, "does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise CheckpointInvalid(name, None, Defect.SYMLINK, "the checkpoint itself is a symlink")
    manifest, manifest_st = read_manifest(path, name=name)
    base = site_of(path).base
    newest_ns = manifest_st.st_mtime_ns
    dirs_ok: set[str] = set()
    for entry in manifest.files:
        newest_ns = max(newest_ns, _lstat_listed(base, entry, name, dirs_ok).st_mtime_ns)
    key = CacheKey(name, newest_ns, manifest_st.st_size + manifest.total_bytes)
    return manifest, key


def file_digest(
    path: Path,
    algo: HashAlgo,
    *,
    expected_bytes: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    buffer: bytearray | None = None,
) -> tuple[str, int]:
    """(hex digest, bytes read) of a file, streamed in chunks; symlinks are not followed.

    With `expected_bytes`, reads exactly that much and raises ValueError if the file is
    shorter or longer (it changed since it was listed).
    """
    buf = buffer if buffer is not None else bytearray(chunk_bytes)
    view = memoryview(buf)
    hasher = algo.new()
    total = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with open(fd, "rb", buffering=0, closefd=False) as handle:
            while True:
                want = len(buf)
                if expected_bytes is not None:
                    want = min(want, expected_bytes - total)
                    if want == 0:
                        if handle.readinto(view[:1]):
                            raise ValueError(f"longer than {expected_bytes} bytes")
                        break
                got = handle.readinto(view[:want])
                if not got:
                    if expected_bytes is not None:
                        raise ValueError(f"ends after {total} of {expected_bytes} bytes")
                    break
                hasher.update(view[:got])
                total += got
    finally:
        os.close(fd)
    return hasher.hexdigest(), total


def full_check(
    path: Path,
    manifest: Manifest,
    *,
    name: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> None:
    """Every listed file's digest matches; raises CheckpointInvalid on the first that does not."""
    name = name or path.name
    base = site_of(path).base
    buffer = bytearray(chunk_bytes)
    for entry in manifest.files:
        check_file(base, entry, manifest.hash, name=name, buffer=buffer)


def check_file(
    base: Path, entry: FileEntry, algo: HashAlgo, *, name: str, buffer: bytearray
) -> None:
    """One listed file under `base` has its size and digest; raises CheckpointInvalid."""
    try:
        digest, _ = file_digest(
            base / entry.path, algo, expected_bytes=entry.size_bytes, buffer=buffer
        )
    except FileNotFoundError:
        raise CheckpointInvalid(name, entry.path, Defect.FILE_MISSING, "not found") from None
    except ValueError as exc:
        raise CheckpointInvalid(name, entry.path, Defect.SIZE_MISMATCH, str(exc)) from None
    except OSError as exc:
        raise CheckpointInvalid(name, entry.path, Defect.UNREADABLE, str(exc)) from None
    if digest != entry.digest:
        raise CheckpointInvalid(
            name,
            entry.path,
            Defect.DIGEST_MISMATCH,
            f"{algo.value} is {digest}, manifest says {entry.digest}",
        )


def verify_checkpoint(
    path: Path,
    level: VerifyLevel = VerifyLevel.FULL,
    *,
    name: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Verdict:
    """Verify one checkpoint (directory, or adopted file) and say what was found."""
    name = name or path.name
    manifest: Manifest | None = None
    key: CacheKey | None = None
    try:
        manifest, key = quick_check(path, name=name)
        if level is VerifyLevel.FULL:
            full_check(path, manifest, name=name, chunk_bytes=chunk_bytes)
    except CheckpointInvalid as problem:
        return Verdict(name, path, level, problem, manifest, key)
    return Verdict(name, path, level, None, manifest, key)
