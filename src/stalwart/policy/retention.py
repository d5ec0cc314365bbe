"""Retention: which checkpoints to delete. The decision is a pure function over plain records;
`stalwart.checkpoint.pruning` (`apply_retention`, `disk_free_bytes`) is the thin shell around it.

Rules, in order of strength:
- the newest verified (INTACT) checkpoint is never deleted, even when asked explicitly;
- pinned ones are never deleted, nor what stalwart cannot check (look-alikes);
- the newest `keep_last` verified ones, every `keep_every_steps` milestone and the
  `keep_best` verified ones with the best `best_metric` recorded in their manifest are
  kept, unless free space is below `min_free_bytes` + the expected size of the next save:
  then they go oldest first, with a warning each, until the floor is met;
- unverified checkpoints newer than the newest verified one are kept (they may be the
  newest good one), corrupt ones are left to quarantine, quarantined ones are deleted
  only on request;
- when nothing more can be pruned, the plan says how many bytes are still missing.

"Newest" is by step; a checkpoint without a step in its name (Lightning's `last.ckpt`)
is placed by its modification time among the others, as discovery does, so the alias a
framework resumes from is never taken for the oldest.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from stalwart.types import CheckpointState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 3
    """Newest verified checkpoints kept (the newest verified one is kept even at 0)."""
    keep_every_steps: int | None = None
    """Also keep each checkpoint whose step is a multiple of this (milestones)."""
    min_free_bytes: int = 0
    """Free space wanted after the next save; below it, kept checkpoints are pruned too."""
    keep_best: int = 0
    """Also keep this many verified checkpoints with the best `best_metric` (0: off)."""
    best_metric: str | None = None
    """Name of a metric recorded in the manifests' meta (e.g. 'val_loss')."""
    best_mode: Literal["min", "max"] = "min"
    """min: lower is better (a loss); max: higher is better (an accuracy)."""

    def __post_init__(self) -> None:
        if self.keep_last < 0 or self.min_free_bytes < 0 or self.keep_best < 0:
            raise ValueError("keep_last, keep_best and min_free_bytes must be >= 0")
        if self.keep_every_steps is not None and self.keep_every_steps <= 0:
            raise ValueError("keep_every_steps must be > 0 (or None)")
        if self.keep_best and not self.best_metric:
            raise ValueError("keep_best needs best_metric (the metric that ranks checkpoints)")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")


@dataclass(frozen=True)
class RetentionItem:
    """One checkpoint as retention sees it."""

    name: str
    path: Path
    step: int | None
    size_bytes: int
    state: CheckpointState
    pinned: bool = False
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Metrics recorded in its manifest's meta (see `recorded_metrics`)."""
    mtime_ns: int | None = None
    """Modification time; places a checkpoint without a step among the others."""
    recognized: bool = True
    """False: not a checkpoint stalwart can check (a look-alike); never deleted."""


class Keep(enum.Enum):
    """Why an item is kept."""

    NEWEST_VERIFIED = "newest verified"
    PINNED = "pinned"
    KEEP_LAST = "among the newest verified"
    MILESTONE = "milestone step"
    BEST = "among the best by the metric"
    NEWER_UNVERIFIED = "unverified, newer than the newest verified"
    CORRUPT = "corrupt: quarantine it, retention does not delete it"
    QUARANTINED = "quarantined: deleted only on request"
    STAGING = "staging: removed at start"
    UNRECOGNIZED = "not a checkpoint stalwart can check: never deleted"


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


METRICS_KEY = "metrics"
"""Key of the metrics in a manifest's `meta`: `{"metrics": {"val_loss": 0.41, ...}}`."""


def recorded_metrics(meta: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite numeric metrics recorded in a manifest's meta (anything else is ignored)."""
    raw = (meta or {}).get(METRICS_KEY)
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(name): float(value)
        for name, value in raw.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def newest_first(items: Iterable[RetentionItem]) -> list[RetentionItem]:
    """By step, newest first; items without a step go by mtime among them (as discovery).

    An item without a step and without an mtime is taken for older than every stepped one.
    """
    stepped = sorted(
        (i for i in items if i.step is not None), key=lambda i: (i.step, i.name), reverse=True
    )
    unstepped = sorted(
        (i for i in items if i.step is None),
        key=lambda i: (-1 if i.mtime_ns is None else i.mtime_ns, i.name),
        reverse=True,
    )
    merged: list[RetentionItem] = []
    s = u = 0
    while s < len(stepped) or u < len(unstepped):
        if u == len(unstepped):
            take_unstepped = False
        elif s == len(stepped):
            take_unstepped = True
        else:
            u_ns, s_ns = unstepped[u].mtime_ns, stepped[s].mtime_ns
            take_unstepped = u_ns is not None and s_ns is not None and u_ns >= s_ns
        if take_unstepped:
            merged.append(unstepped[u])
            u += 1
        else:
            merged.append(stepped[s])
            s += 1
    return merged


def rank_by_metric(
    items: Iterable[RetentionItem], metric: str, mode: Literal["min", "max"] = "min"
) -> list[tuple[RetentionItem, float]]:
    """Items that recorded `metric`, best first; ties go to the newer checkpoint."""
    ordered = newest_first(items)
    scored = [(item, item.metrics[metric]) for item in ordered if metric in item.metrics]
    sign = 1.0 if mode == "min" else -1.0
    position = {id(item): index for index, item in enumerate(ordered)}
    return sorted(scored, key=lambda pair: (sign * pair[1], position[id(pair[0])]))


def _is_milestone(item: RetentionItem, policy: RetentionPolicy) -> bool:
    every = policy.keep_every_steps
    return every is not None and item.step is not None and item.step % every == 0


def _best_ids(ordered: Sequence[RetentionItem], policy: RetentionPolicy) -> set[int]:
    if not policy.keep_best or not policy.best_metric:
        return set()
    verified = [i for i in ordered if i.state is CheckpointState.INTACT]
    ranked = rank_by_metric(verified, policy.best_metric, policy.best_mode)
    return {id(item) for item, _ in ranked[: policy.keep_best]}


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
    ordered = newest_first(items)
    age = {id(item): -index for index, item in enumerate(ordered)}  # sorted: oldest first
    newest_verified = next((i for i in ordered if i.state is CheckpointState.INTACT), None)
    best = _best_ids(ordered, policy)
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
        elif not item.recognized:
            reason = Keep.UNRECOGNIZED
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
        elif id(item) in best:
            reason = Keep.BEST
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
            spare_reasons = (Keep.KEEP_LAST, Keep.MILESTONE, Keep.BEST)
            spare = [pair for pair in kept if pair[1] in spare_reasons]
            for item, reason in sorted(spare, key=lambda pair: age[id(pair[0])]):
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
    delete.sort(key=lambda item: age[id(item)])
    return RetentionPlan(tuple(delete), tuple(kept), tuple(refused), short_bytes, tuple(warnings))
