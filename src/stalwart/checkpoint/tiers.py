"""The memory tier: where a job keeps its newest checkpoint in tmpfs, and its housekeeping.

    /dev/shm/stalwart/<name>-<hash of state_dir>/step-000001234/   the same layout as on disk

A checkpoint there is committed exactly as on disk (staging, manifest with digests, atomic
rename), so discovery and verification treat it the same. It survives the trainer's death
(a crash, OOM, hang, an infra error relaunched on this host), not a reboot. The directory
is keyed by the job, not the run: a supervisor restarted by systemd finds it again.

The supervisor creates it and removes it when the job ends (completed, stopped after a
durable save, gave up); the trainer keeps the newest checkpoint there and removes older
ones (`keep_newest`). Nothing else is written under the tier's root.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from stalwart.checkpoint.discovery import ResumeDecision
from stalwart.checkpoint.layout import scan
from stalwart.client import MEMORY_DIR_ENV

__all__ = [
    "DEFAULT_MEMORY_ROOT",
    "MEMORY_DIR_ENV",
    "MEMORY_FRACTION_ENV",
    "covered_by_disk",
    "create_memory_dir",
    "fit_problem",
    "is_tmpfs",
    "job_memory_dir",
    "keep_newest",
    "newer_decision",
    "remove_memory_dir",
    "tier_of",
]

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_ROOT = Path("/dev/shm/stalwart")
MEMORY_FRACTION_ENV = "STALWART_MEMORY_FRACTION"
"""The share of available memory a snapshot may take in the tier."""

Tier = Literal["memory", "disk"]


def job_memory_dir(root: Path | None, name: str, state_dir: Path) -> Path:
    """The job's own tier under `root`: its name and a hash of its state directory (two
    jobs of the same name in different directories never share one)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "job"
    return (root or DEFAULT_MEMORY_ROOT) / f"{safe}-{digest}"


def create_memory_dir(path: Path) -> Path:
    """Create the job's tier (owner only); an existing one (a restarted supervisor) is kept."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def remove_memory_dir(path: Path) -> bool:
    """Remove the job's tier and, when it is empty, the shared root; True if it is gone."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove the memory tier %s: %s", path, exc)
        return False
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when no other job keeps a tier there
    return True


def tier_of(path: str | os.PathLike[str], memory_dir: Path | None) -> Tier:
    """Which tier a checkpoint path is in."""
    if memory_dir is not None and Path(path).is_relative_to(memory_dir):
        return "memory"
    return "disk"


def is_tmpfs(path: Path) -> bool:
    """Whether `path` is on a memory file system (tmpfs, ramfs), by /proc/self/mounts."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    resolved = str(path.resolve())
    best, fstype = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
            best
        ):
            best, fstype = mount, fields[2]
    return fstype in ("tmpfs", "ramfs")


def fit_problem(snapshot_bytes: int, available_bytes: int, fraction: float) -> str | None:
    """Why a snapshot may not go into the memory tier, or None when it fits."""
    allowed = int(available_bytes * fraction)
    if snapshot_bytes <= allowed:
        return None
    return (
        f"a snapshot of {snapshot_bytes / 2**20:.0f} MiB exceeds {fraction:.0%} of the "
        f"{available_bytes / 2**20:.0f} MiB of memory available ({allowed / 2**20:.0f} MiB); "
        "raise checkpoint.memory.max_memory_fraction or disable the memory tier"
    )


def keep_newest(root: Path, keep: int = 1) -> list[Path]:
    """Remove all but the `keep` newest committed checkpoints in the tier; the removed."""
    removed = []
    for entry in scan(root).managed[keep:]:
        try:
            shutil.rmtree(entry.path)
        except OSError as exc:
            logger.warning("could not remove %s from the memory tier: %s", entry.path, exc)
            continue
        removed.append(entry.path)
    return removed


def covered_by_disk(memory_dir: Path, disk_dir: Path) -> bool:
    """Whether the disk holds a checkpoint at least as new as the memory tier's newest."""
    try:
        in_memory = scan(memory_dir).managed
    except OSError:
        return True
    if not in_memory or in_memory[0].step is None:
        return True
    try:
        on_disk = [e.step for e in scan(disk_dir).managed if e.step is not None]
    except OSError:
        return False
    return bool(on_disk) and max(on_disk) >= in_memory[0].step


def newer_decision(disk: ResumeDecision, memory: ResumeDecision) -> ResumeDecision:
    """The resume point across tiers: the memory tier's when it is newer (or the same step:
    it loads faster), else the disk's; what either quarantined or skipped is kept."""
    on_disk, in_memory = disk.resume_from, memory.resume_from
    use_memory = in_memory is not None and (
        on_disk is None or (in_memory.step or 0) >= (on_disk.step or 0)
    )
    chosen = memory if use_memory else disk
    if use_memory and in_memory is not None:
        logger.info("resuming from the memory tier: %s", in_memory.path)
    return ResumeDecision(
        chosen.resume_from,
        (*memory.skipped, *disk.skipped),
        (*memory.quarantined, *disk.quarantined),
        (*memory.removed_leftovers, *disk.removed_leftovers),
        (*memory.stuck_leftovers, *disk.stuck_leftovers),
    )
