"""Pruning: retention's plan carried out on disk, and the inputs it needs from disk.

The plan itself is pure (`stalwart.policy.retention`); here are discovery's records turned
into its items, the free space, the best checkpoint by a recorded metric, and the deletion.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import psutil

from stalwart.checkpoint.discovery import CheckpointInfo, list_checkpoints
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import deleting_name
from stalwart.checkpoint.verify import VerifyLevel, verify_checkpoint
from stalwart.policy.retention import RetentionItem, RetentionPlan, rank_by_metric, recorded_metrics

logger = logging.getLogger(__name__)


def retention_items(
    infos: Sequence[CheckpointInfo], pinned: Collection[str] = ()
) -> list[RetentionItem]:
    """Discovery's records as retention's input, with the metrics their manifests record."""
    return [
        RetentionItem(
            name=info.name,
            path=info.path,
            step=info.step,
            size_bytes=info.size_bytes or 0,
            state=info.state,
            pinned=info.name in pinned,
            metrics=MappingProxyType(
                recorded_metrics(info.manifest.meta if info.manifest is not None else None)
            ),
            mtime_ns=info.mtime_ns,
            recognized=info.recognized,
        )
        for info in infos
    ]


def find_best(
    root: Path,
    metric: str,
    *,
    mode: Literal["min", "max"] = "min",
    foreign_globs: Sequence[str] = (),
) -> tuple[CheckpointInfo, float] | None:
    """The intact checkpoint with the best recorded `metric`, and its value; None if none.

    Candidates are ranked by the metric in their manifests, then fully verified best first
    (digests): a corrupt one is skipped however good its value, and so is one rewritten
    since its manifest was written (its metric describes other weights).
    """
    infos = list_checkpoints(root, full=False, foreign_globs=foreign_globs)
    by_name = {info.name: info for info in infos if info.manifest is not None}
    items = retention_items(list(by_name.values()))
    for item, value in rank_by_metric(items, metric, mode):
        info = by_name[item.name]
        verdict = verify_checkpoint(info.path, VerifyLevel.FULL, name=info.name)
        if verdict.intact:
            return info, value
        logger.warning("not choosing %s (%s=%g): %s", info.name, metric, value, verdict.reason)
    return None


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (for non-root users)."""
    return int(psutil.disk_usage(str(path)).free)


def apply_retention(root: Path, plan: RetentionPlan, *, ops: FsOps | None = None) -> list[Path]:
    """Delete what the plan says: rename aside first (atomic), then remove. Returns the paths.

    A crash in between leaves a `.deleting-*` entry, removed at the next start, never a
    half-deleted checkpoint under its own name. An entry that vanishes underneath (another
    node's supervisor shares the directory) is skipped, not an error.
    """
    ops = ops or FsOps()
    for warning in plan.warnings:
        logger.warning("%s", warning)
    deleted = []
    for item in plan.delete:
        aside = root / deleting_name(item.name, os.getpid())
        try:
            ops.replace(item.path, aside)
        except FileNotFoundError:
            # Another node's supervisor shares the directory and quarantined it meanwhile.
            logger.info("not pruning %s: it is no longer there", item.name)
            continue
        ops.fsync_dir(item.path.parent)
        try:
            ops.remove_tree(aside)
        except FileNotFoundError:
            # Someone removed it under us (another node cleaning leftovers): gone either way.
            logger.info("%s vanished while it was being removed", aside.name)
        logger.info("pruned checkpoint %s (%s)", item.name, item.state.value)
        deleted.append(item.path)
    return deleted
