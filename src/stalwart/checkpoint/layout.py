"""Names on disk (DESIGN.md "Checkpoint on disk") and the scan that sorts a directory into them.

<root>/step-000001234/                       committed (MANIFEST.json inside is the commit)
<root>/.staging-step-000001234-<pid>/        a save in progress; never resumed from
<root>/.deleting-step-000001234-<pid>/       a prune in progress; removed at start
<root>/.quarantine/<name>-<reason>/          failed verification or poison; never deleted silently
<root>/<foreign>                             written by the trainer itself: matched by a glob,
                                             or a known layout when none is set (detection.py)
<root>/<foreign file>.MANIFEST.json          manifest of an adopted foreign file
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stalwart.checkpoint.detection import Detected, detect

MANIFEST_NAME = "MANIFEST.json"
ADOPTED_SUFFIX = ".MANIFEST.json"
"""Suffix of the manifest written beside an adopted foreign checkpoint file."""
STEP_PREFIX = "step-"
STEP_DIGITS = 9
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
QUARANTINE_DIR = ".quarantine"

_STEP_RE = re.compile(r"step-(\d{9,})")
_STAGING_RE = re.compile(r"\.staging-step-(\d{9,})-(\d+)")
_FOREIGN_STEP_RES = (
    re.compile(r"(?:^|[^a-z])step[=_-]?(\d+)", re.IGNORECASE),  # Lightning: epoch=1-step=500
    re.compile(r"^checkpoint[-_](\d+)$"),  # Hugging Face: checkpoint-500
    re.compile(r"(\d+)(?:\.[A-Za-z0-9]+)?$"),  # anything ending in a number: model_500.pt
)


class EntryKind(enum.Enum):
    MANAGED = "managed"
    FOREIGN = "foreign"
    STAGING = "staging"
    DELETING = "deleting"
    QUARANTINED = "quarantined"


class QuarantineReason(enum.Enum):
    CORRUPT = "corrupt"
    """Failed verification (digests, sizes, manifest)."""
    INVALID = "invalid"
    """A foreign checkpoint that failed its format check."""
    POISON = "poison"
    """Verified intact, but attempts resumed from it keep failing (restart policy)."""
    DIVERGED = "diverged"
    """Written after the loss began to diverge (NaN, a spike that stayed): kept, never
    resumed from."""
    MANUAL = "manual"
    """Put aside by a person."""


@dataclass(frozen=True)
class Entry:
    """One top-level name in the checkpoint directory (or in .quarantine/).

    Scanning costs no syscall per name beyond the directory read: the path and the mtime
    are computed when first asked for (a directory of 1,000 checkpoints is scanned at each
    restart, and only the newest few are looked at).
    """

    name: str
    parent: Path
    kind: EntryKind
    step: int | None
    is_dir: bool
    is_symlink: bool
    known_mtime_ns: int | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def path(self) -> Path:
        return self.parent / self.name

    @functools.cached_property
    def mtime_ns(self) -> int:
        if self.known_mtime_ns is not None:
            return self.known_mtime_ns
        try:
            return os.lstat(self.path).st_mtime_ns
        except FileNotFoundError:
            return 0


@dataclass(frozen=True)
class Listing:
    """A checkpoint directory sorted by kind; `managed` and `foreign` newest first."""

    root: Path
    managed: tuple[Entry, ...]
    foreign: tuple[Entry, ...]
    staging: tuple[Entry, ...]
    deleting: tuple[Entry, ...]
    quarantined: tuple[Entry, ...]
    lookalikes: tuple[Entry, ...] = ()
    """Named like a known layout but not one (no globs set): reported, never touched."""

    @property
    def candidates(self) -> tuple[Entry, ...]:
        """Everything that might be resumed from, newest first."""
        return tuple(newest_first([*self.managed, *self.foreign]))


def checkpoint_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"a checkpoint step is >= 0, got {step}")
    return f"{STEP_PREFIX}{step:0{STEP_DIGITS}d}"


def parse_step(name: str) -> int | None:
    """The step of a committed checkpoint's name (`step-000001234` -> 1234), else None."""
    match = _STEP_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def staging_name(step: int, pid: int) -> str:
    return f"{STAGING_PREFIX}{checkpoint_name(step)}-{pid}"


def parse_staging(name: str) -> tuple[int, int] | None:
    """(step, writer pid) of a staging directory's name, else None."""
    match = _STAGING_RE.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def deleting_name(name: str, pid: int) -> str:
    return f"{DELETING_PREFIX}{name}-{pid}"


def foreign_step(name: str) -> int | None:
    """Best-effort step of a foreign checkpoint from its name; None when the name has none."""
    for pattern in _FOREIGN_STEP_RES:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def adopted_manifest_path(path: Path) -> Path:
    """Where the manifest of a checkpoint lives: inside a directory, beside a file."""
    return path.with_name(path.name + ADOPTED_SUFFIX)


def quarantine_name(name: str, reason: QuarantineReason, taken: Iterable[str] = ()) -> str:
    """`<name>-<reason>`, with `.2`, `.3`, ... when quarantined before (nothing is overwritten)."""
    base = f"{name}-{reason.value}"
    used = set(taken)
    if base not in used:
        return base
    counter = 2
    while f"{base}.{counter}" in used:
        counter += 1
    return f"{base}.{counter}"


def newest_first(entries: Sequence[Entry]) -> list[Entry]:
    """Order by step, newest first; entries without a step (`last.ckpt`) go by mtime among them.

    Steps are authoritative where they exist (a copied directory has a new mtime but the
    same step); a name without a step is placed before the first stepped entry it is newer than.
    """
    stepped = sorted(
        (e for e in entries if e.step is not None), key=lambda e: (e.step, e.name), reverse=True
    )
    unstepped = sorted(
        (e for e in entries if e.step is None), key=lambda e: (e.mtime_ns, e.name), reverse=True
    )
    merged: list[Entry] = []
    i = j = 0
    while i < len(stepped) or j < len(unstepped):
        take_unstepped = j < len(unstepped) and (
            i == len(stepped) or unstepped[j].mtime_ns >= stepped[i].mtime_ns
        )
        if take_unstepped:
            merged.append(unstepped[j])
            j += 1
        else:
            merged.append(stepped[i])
            i += 1
    return merged


def _entry(handle: os.DirEntry[str], parent: Path, kind: EntryKind, step: int | None) -> Entry:
    # DirEntry answers these from the directory read itself (d_type), without a stat.
    is_symlink = handle.is_symlink()
    is_dir = not is_symlink and handle.is_dir(follow_symlinks=False)
    return Entry(handle.name, parent, kind, step, is_dir, is_symlink)


def matches_foreign(name: str, foreign_globs: Sequence[str], path: Path | None = None) -> bool:
    """Whether a top-level name is a foreign checkpoint: per the globs, or when none are
    configured a known layout (`path` lets a DCP directory be recognised by its contents)."""
    return _foreign(name, foreign_globs, path) is Detected.CHECKPOINT


def _foreign(name: str, foreign_globs: Sequence[str], path: Path | None) -> Detected | None:
    if name.startswith(".") or name.endswith(ADOPTED_SUFFIX) or name == MANIFEST_NAME:
        return None
    if not foreign_globs:
        return detect(name, path)
    matched = any(fnmatch.fnmatchcase(name, pattern) for pattern in foreign_globs)
    return Detected.CHECKPOINT if matched else None


def scan(root: Path, foreign_globs: Sequence[str] = ()) -> Listing:
    """Sort the top level of `root` by kind (one directory read). Missing root: empty.

    Without `foreign_globs`, the known framework layouts are foreign checkpoints
    (detection.py; a directory not otherwise named costs one stat for DCP's `.metadata`).
    """
    managed: list[Entry] = []
    foreign: list[Entry] = []
    lookalikes: list[Entry] = []
    staging: list[Entry] = []
    deleting: list[Entry] = []
    quarantined: list[Entry] = []
    try:
        handles = list(os.scandir(root))
    except FileNotFoundError:
        handles = []
    for handle in handles:
        name = handle.name
        step = parse_step(name)
        try:
            if step is not None:
                managed.append(_entry(handle, root, EntryKind.MANAGED, step))
            elif (staged := parse_staging(name)) is not None:
                staging.append(_entry(handle, root, EntryKind.STAGING, staged[0]))
            elif name.startswith(DELETING_PREFIX):
                deleting.append(_entry(handle, root, EntryKind.DELETING, None))
            elif name == QUARANTINE_DIR and handle.is_dir(follow_symlinks=False):
                quarantined.extend(_scan_quarantine(root / name))
            elif (found := _foreign(name, foreign_globs, _dir_path(handle, root))) is not None:
                entry = _entry(handle, root, EntryKind.FOREIGN, foreign_step(name))
                (foreign if found is Detected.CHECKPOINT else lookalikes).append(entry)
        except FileNotFoundError:
            continue  # removed while we looked
    return Listing(
        root=root,
        managed=tuple(newest_first(managed)),
        foreign=tuple(newest_first(foreign)),
        staging=tuple(sorted(staging, key=lambda e: e.name)),
        deleting=tuple(sorted(deleting, key=lambda e: e.name)),
        quarantined=tuple(sorted(quarantined, key=lambda e: e.name)),
        lookalikes=tuple(sorted(lookalikes, key=lambda e: e.name)),
    )


def _dir_path(handle: os.DirEntry[str], root: Path) -> Path | None:
    """The entry's path when it is a real directory (d_type: no stat), for DCP detection."""
    return root / handle.name if handle.is_dir(follow_symlinks=False) else None


def _scan_quarantine(path: Path) -> list[Entry]:
    entries = []
    for handle in os.scandir(path):
        original = handle.name.rsplit("-", 1)[0]
        try:
            entries.append(_entry(handle, path, EntryKind.QUARANTINED, parse_step(original)))
        except FileNotFoundError:
            continue
    return entries
