"""Quarantine: a checkpoint that failed verification, or that the restart policy marked as
poison, moves to `.quarantine/<name>-<reason>/`. It is kept (a person may want it), never
resumed from, and only deleted on an explicit request (`stalwart checkpoints prune`).
"""

from __future__ import annotations

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


def quarantine(
    root: Path,
    name: str,
    reason: QuarantineReason,
    *,
    detail: str = "",
    ops: FsOps | None = None,
) -> Quarantined:
    """Move `root/name` (directory, or file with its manifest) into quarantine, durably."""
    ops = ops or FsOps()
    source = root / name
    st = os.lstat(source)  # FileNotFoundError: nothing to quarantine, the caller's mistake
    qdir = root / QUARANTINE_DIR
    if not qdir.is_dir():
        ops.mkdir(qdir)
        ops.fsync_dir(root)
    destination = qdir / quarantine_name(name, reason, os.listdir(qdir))
    if stat.S_ISDIR(st.st_mode):
        ops.replace(source, destination)
    else:
        # A file goes into a directory of its own, with its manifest if it was adopted; the
        # manifest moves first so a crash in between never leaves a stale manifest beside it.
        ops.mkdir(destination)
        manifest = site_of(source).manifest
        if os.path.lexists(manifest):
            ops.replace(manifest, destination / manifest.name)
        ops.replace(source, destination / name)
        ops.fsync_dir(destination)
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
