"""Quarantine: a checkpoint that failed verification, or that the restart policy marked as
poison, moves to `.quarantine/<name>-<reason>/`. It is kept (a person may want it), never
resumed from, and only deleted on an explicit request (`stalwart checkpoints prune`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import QUARANTINE_DIR, QuarantineReason, quarantine_name
from stalwart.checkpoint.verify import site_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quarantined:
    """A checkpoint moved aside; the supervisor journals this record."""

    name: str
    source: Path
    destination: Path
    reason: QuarantineReason
    detail: str
    concurrent: bool = False
    """Another supervisor sharing the directory (another node) moved it first; `destination`
    is where it went."""


def _already_quarantined(root: Path, name: str) -> Path | None:
    """The newest `.quarantine/<name>-<reason>[.N]` entry, whatever the reason."""
    qdir = root / QUARANTINE_DIR
    try:
        entries = os.listdir(qdir)
    except FileNotFoundError:
        return None
    bases = tuple(f"{name}-{reason.value}" for reason in QuarantineReason)
    found: list[tuple[int, Path]] = []
    for entry in entries:
        base, _, counter = entry.rpartition(".")
        if entry in bases or (base in bases and counter.isdecimal()):
            try:
                found.append((os.lstat(qdir / entry).st_mtime_ns, qdir / entry))
            except FileNotFoundError:
                continue
    return max(found)[1] if found else None


def _moved_by_another(
    root: Path, name: str, reason: QuarantineReason, detail: str, *, moving: Path | None = None
) -> Quarantined:
    """The source vanished under us: another supervisor sharing the directory quarantined
    it first (or is doing so: `moving` is the destination it took). Not an error."""
    destination = moving or _already_quarantined(root, name)
    if destination is None:
        raise FileNotFoundError(
            errno.ENOENT, f"no checkpoint {name} to quarantine (and none in quarantine)", root
        )
    logger.info(
        "checkpoint %s was quarantined by another supervisor sharing %s (as %s); nothing to do",
        name,
        root,
        destination.name,
    )
    note = "moved first by another supervisor sharing the directory"
    return Quarantined(
        name,
        root / name,
        destination,
        reason,
        f"{detail}; {note}" if detail else note,
        concurrent=True,
    )


def quarantine(
    root: Path,
    name: str,
    reason: QuarantineReason,
    *,
    detail: str = "",
    ops: FsOps | None = None,
) -> Quarantined:
    """Move `root/name` (directory, or file with its manifest) into quarantine, durably.

    Nodes of a multi-node job share the directory and may quarantine the same broken
    checkpoint at once: when the source vanishes under us and a quarantine entry of that
    name exists, the other supervisor won; the record says so (`concurrent`). A name
    neither present nor quarantined raises FileNotFoundError (the caller's mistake).
    """
    ops = ops or FsOps()
    source = root / name
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return _moved_by_another(root, name, reason, detail)
    qdir = root / QUARANTINE_DIR
    destination = qdir
    try:
        if not qdir.is_dir():
            with contextlib.suppress(FileExistsError):  # another node made it just now
                ops.mkdir(qdir)
            ops.fsync_dir(root)
        destination = qdir / quarantine_name(name, reason, os.listdir(qdir))
        if stat.S_ISDIR(st.st_mode):
            ops.replace(source, destination)
        else:
            # A file goes into a directory of its own, with its manifest if it was adopted;
            # the manifest moves first so a crash in between never leaves a stale manifest
            # beside it.
            try:
                ops.mkdir(destination)
            except FileExistsError:
                # Made between our listing and now: another node is moving this very file.
                return _moved_by_another(root, name, reason, detail, moving=destination)
            manifest = site_of(source).manifest
            if os.path.lexists(manifest):
                ops.replace(manifest, destination / manifest.name)
            ops.replace(source, destination / name)
            ops.fsync_dir(destination)
    except FileNotFoundError:
        if os.path.lexists(source):
            raise
        return _moved_by_another(root, name, reason, detail)
    ops.fsync_dir(qdir)
    ops.fsync_dir(root)
    logger.warning(
        "quarantined checkpoint %s as %s (%s%s); it is kept and never resumed from",
        name,
        destination,
        reason.value,
        f": {detail}" if detail else "",
    )
    return Quarantined(name, source, destination, reason, detail)
