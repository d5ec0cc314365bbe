"""Retention: which checkpoints to delete. The decision is a pure function over plain records;
`apply_retention` and `disk_free_bytes` are the thin shell around it.

Rules, in order of strength:
- the newest verified (INTACT) checkpoint is never deleted, even when asked explicitly;
- pinned ones are never deleted;
- the newest `keep_last` verified ones and every `keep_every_steps` milestone are kept,
  unless free space is below `min_free_bytes` + the expected size of the next save: then
  they go oldest first, with a warning each, until the floor is met;
- unverified checkpoints newer than the newest verified one are kept (they may be the
  newest good one), corrupt ones are left to quarantine, quarantined ones are deleted
  only on request;
- when nothing more can be pruned, the plan says how many bytes are still missing.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from stalwart.checkpoint.discovery import CheckpointInfo
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import CheckpointState, deleting_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 3
    """Newest verified checkpoints kept (the newest verified one is kept even at 0)."""
    keep_every_steps: int | None = None
    """Also keep each checkpoint whose step is a multiple of this (milestones)."""
    min_free_bytes: int = 0
    """Free space wanted after the next save; below it, kept checkpoints are pruned too."""

    def __post_init__(self) -> None:
        if self.keep_last < 0 or self.min_free_bytes < 0:
            raise ValueError("keep_last and min_free_bytes must be >= 0")
        if self.keep_every_steps is not None and self.keep_every_steps <= 0:
            raise ValueError("keep_every_steps must be > 0 (or None)")


@dataclass(frozen=True)
class RetentionItem:
    """One checkpoint as retention sees it."""

    name: str
    path: Path
    step: int | None
    size_bytes: int
    state: CheckpointState
    pinned: bool = False


class Keep(enum.Enum):
    """Why an item is kept."""

    NEWEST_VERIFIED = "newest verified"
    PINNED = "pinned"
    KEEP_LAST = "among the newest verified"
    MILESTONE = "milestone step"
    NEWER_UNVERIFIED = "unverified, newer than the newest verified"
    CORRUPT = "corrupt: quarantine it, retention does not delete it"
    QUARANTINED = "quarantined: deleted only on request"
    STAGING = "staging: removed at start"


@dataclass(frozen=True)
class RetentionPlan:
    delete: tuple[RetentionItem, ...]
    """Oldest first."""
    kept: tuple[tuple[RetentionItem, Keep], ...]
    refused: tuple[tuple[str, str], ...]
    """Explicit requests that were refused: (name, why)."""
    short_bytes: int
    """Bytes still missing to reach the free-space floor after this plan (0: none)."""
    warnings: tuple[str, ...]


def _order_key(item: RetentionItem) -> tuple[int, str]:
    return (-1 if item.step is None else item.step, item.name)


def _is_milestone(item: RetentionItem, policy: RetentionPolicy) -> bool:
    every = policy.keep_every_steps
    return every is not None and item.step is not None and item.step % every == 0


def plan_retention(
    items: Iterable[RetentionItem],
    policy: RetentionPolicy,
    *,
    free_bytes: int | None = None,
    expected_save_bytes: int | None = None,
    requested: Collection[str] = (),
    prune_quarantined: bool = False,
) -> RetentionPlan:
    """Decide what to delete. Pure: no I/O, same answer for the same input.

    `free_bytes` None skips the space rules; `expected_save_bytes` defaults to the size of the
    newest verified checkpoint (the next save is usually about as big).
    """
    ordered = sorted(items, key=_order_key, reverse=True)
    newest_verified = next((i for i in ordered if i.state is CheckpointState.INTACT), None)
    kept: list[tuple[RetentionItem, Keep]] = []
    delete: list[RetentionItem] = []
    refused: list[tuple[str, str]] = []
    warnings: list[str] = []
    verified_seen = 0
    newer_than_verified = True
    for item in ordered:
        if item is newest_verified:
            newer_than_verified = False
        asked = item.name in requested
        reason: Keep | None = None
        if item is newest_verified:
            reason = Keep.NEWEST_VERIFIED
        elif item.pinned:
            reason = Keep.PINNED
        elif asked:
            reason = None
        elif item.state is CheckpointState.STAGING:
            reason = Keep.STAGING
        elif item.state is CheckpointState.QUARANTINED:
            reason = None if prune_quarantined else Keep.QUARANTINED
        elif item.state is CheckpointState.CORRUPT:
            reason = Keep.CORRUPT
        elif item.state is CheckpointState.UNVERIFIED and newer_than_verified:
            reason = Keep.NEWER_UNVERIFIED
        elif item.state is CheckpointState.INTACT and verified_seen < policy.keep_last:
            reason = Keep.KEEP_LAST
        elif _is_milestone(item, policy):
            reason = Keep.MILESTONE
        if item.state is CheckpointState.INTACT:
            verified_seen += 1
        if reason is None:
            delete.append(item)
            continue
        kept.append((item, reason))
        if asked:
            refused.append((item.name, reason.value))
            warnings.append(f"not deleting {item.name} as asked: {reason.value}")

    short_bytes = 0
    if free_bytes is not None:
        expected = expected_save_bytes
        if expected is None:
            expected = newest_verified.size_bytes if newest_verified else 0
        need = policy.min_free_bytes + expected
        projected = free_bytes + sum(i.size_bytes for i in delete)
        if projected < need:
            spare = [pair for pair in kept if pair[1] in (Keep.KEEP_LAST, Keep.MILESTONE)]
            for item, reason in sorted(spare, key=lambda pair: _order_key(pair[0])):
                if projected >= need:
                    break
                kept.remove((item, reason))
                delete.append(item)
                projected += item.size_bytes
                warnings.append(
                    f"low disk space ({free_bytes} bytes free, want {need}): "
                    f"pruning {item.name} although {reason.value}"
                )
            if projected < need:
                short_bytes = need - projected
                warnings.append(
                    f"nothing more can be pruned: {short_bytes} more bytes must be freed "
                    "before the next save or it may fail (quarantined checkpoints are only "
                    "deleted on request)"
                )
    delete.sort(key=_order_key)
    return RetentionPlan(tuple(delete), tuple(kept), tuple(refused), short_bytes, tuple(warnings))


def retention_items(
    infos: Sequence[CheckpointInfo], pinned: Collection[str] = ()
) -> list[RetentionItem]:
    """Discovery's records as retention's input."""
    return [
        RetentionItem(
            name=info.name,
            path=info.path,
            step=info.step,
            size_bytes=info.size_bytes or 0,
            state=info.state,
            pinned=info.name in pinned,
        )
        for info in infos
    ]


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (for non-root users)."""
    return int(psutil.disk_usage(str(path)).free)


def apply_retention(root: Path, plan: RetentionPlan, *, ops: FsOps | None = None) -> list[Path]:
    """Delete what the plan says: rename aside first (atomic), then remove. Returns the paths.

    A crash in between leaves a `.deleting-*` entry, removed at the next start, never a
    half-deleted checkpoint under its own name.
    """
    ops = ops or FsOps()
    for warning in plan.warnings:
        logger.warning("%s", warning)
    deleted = []
    for item in plan.delete:
        aside = root / deleting_name(item.name, os.getpid())
        ops.replace(item.path, aside)
        ops.fsync_dir(item.path.parent)
        ops.remove_tree(aside)
        logger.info("pruned checkpoint %s (%s)", item.name, item.state.value)
        deleted.append(item.path)
    return deleted
