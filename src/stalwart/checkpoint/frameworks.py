"""Framework-aware repair before a resume, and metrics recorded beside framework checkpoints.

Lightning resumes `fit(ckpt_path="last")` from its `last.ckpt` alias, whatever else is on
disk: a torn alias crashes every attempt, and a missing one makes Lightning start from
scratch without a word. So quarantining a torn alias is not enough; before discovery runs,
`repair_for_resume` puts the newest intact `.ckpt` back under the alias's name (a copy,
made durable, then renamed over it; or a new symlink where Lightning keeps the alias as a
link, `save_last="link"`). The torn bytes are kept in `.quarantine/`.

Hugging Face needs no repair here: an incomplete `checkpoint-N/` fails its format check
(formats.py knows what the Trainer writes) and discovery quarantines it, so
`get_last_checkpoint` finds the previous one.
"""

from __future__ import annotations

import enum
import fnmatch
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart.checkpoint.discovery import MemoryVerifyCache, VerifyCache, alias_target, examine
from stalwart.checkpoint.foreign import DEFAULT_LIMITS, FormatLimits, check_foreign
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import (
    QUARANTINE_DIR,
    Entry,
    Listing,
    QuarantineReason,
    adopted_manifest_path,
    quarantine_name,
    scan,
)
from stalwart.checkpoint.observe import Adopted, adopt
from stalwart.checkpoint.quarantine import Quarantined, quarantine
from stalwart.policy.retention import METRICS_KEY, recorded_metrics
from stalwart.types import CheckpointState

logger = logging.getLogger(__name__)

LIGHTNING_ALIAS_GLOBS = ("last*.ckpt",)
"""Names Lightning resumes `ckpt_path="last"` from (`last.ckpt`, `last-v1.ckpt`, ...)."""
LIGHTNING_SUFFIX = ".ckpt"
COPY_CHUNK_BYTES = 8 * 1024 * 1024
_RESTORE_TEMP_RE = re.compile(r"\..+\.restore-\d+")


class RepairKind(enum.Enum):
    ALIAS_RESTORED = "alias restored"
    """A torn alias file was replaced by a copy of the newest intact checkpoint."""
    ALIAS_RELINKED = "alias relinked"
    """An alias symlink whose target is gone or torn now names the newest intact one."""
    ALIAS_SET_ASIDE = "alias set aside"
    """A broken alias was quarantined; nothing intact was left to restore it from."""


@dataclass(frozen=True)
class Repair:
    """One change made before a resume; the supervisor logs and journals it."""

    kind: RepairKind
    name: str
    """The alias (e.g. `last.ckpt`)."""
    path: Path
    source: Path | None
    """The checkpoint the alias now holds or names; None when set aside."""
    detail: str
    """What was wrong with it."""
    quarantined: Quarantined | None
    """Where the broken one was kept (journal it like any quarantine)."""

    def describe(self) -> str:
        if self.kind is RepairKind.ALIAS_SET_ASIDE:
            return f"{self.name} was broken ({self.detail}) and nothing intact is left: set aside"
        kept = (
            f"; the broken one is kept in {self.quarantined.destination}"
            if self.quarantined
            else ""
        )
        return f"{self.kind.value}: {self.name} ({self.detail}) now holds {self.source}{kept}"


def is_alias(name: str, alias_globs: Sequence[str] = LIGHTNING_ALIAS_GLOBS) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in alias_globs)


def repair_for_resume(
    root: Path,
    foreign_globs: Sequence[str],
    *,
    cache: VerifyCache | None = None,
    ops: FsOps | None = None,
    limits: FormatLimits = DEFAULT_LIMITS,
    alias_globs: Sequence[str] = LIGHTNING_ALIAS_GLOBS,
) -> list[Repair]:
    """Before discovery, while no trainer runs: restore broken framework aliases.

    Only aliases among the foreign checkpoints are looked at (matched by `foreign_globs`,
    or when empty found on their own: detection.py). An alias that is intact, or whose
    format stalwart cannot check, is left alone.
    Pass discovery's cache: the verdicts found here are then not computed twice.
    """
    ops = ops or FsOps()
    cache = cache if cache is not None else MemoryVerifyCache()
    _remove_restore_leftovers(root, ops)
    listing = scan(root, foreign_globs)
    broken: list[tuple[Entry, str]] = []
    for entry in listing.foreign:
        if entry.is_dir or not is_alias(entry.name, alias_globs):
            continue
        problem = _alias_problem(entry, listing, cache, limits)
        if problem is not None:
            broken.append((entry, problem))
    if not broken:
        return []
    skip = {entry.name for entry, _ in broken}
    source = _newest_intact_file(listing, skip, cache, limits)
    return [_repair(root, entry, problem, source, ops) for entry, problem in broken]


def _alias_problem(
    entry: Entry, listing: Listing, cache: VerifyCache, limits: FormatLimits
) -> str | None:
    """Why the framework cannot resume from this alias, or None if it can (or we can't tell)."""
    if not entry.is_symlink:
        info = examine(entry, full=True, cache=cache, limits=limits)
        return info.reason if info.state is CheckpointState.CORRUPT else None
    target = alias_target(entry.path)
    if target is None:
        return "a symlink that names no checkpoint beside it"
    known = {e.name: e for e in listing.candidates}
    if target.name in known:
        info = examine(known[target.name], full=True, cache=cache, limits=limits)
        state, reason = info.state, info.reason
    else:
        verdict = check_foreign(target, full=True, limits=limits)
        state = CheckpointState.INTACT if verdict.valid else CheckpointState.CORRUPT
        reason = verdict.reason
    if state is CheckpointState.CORRUPT:
        return f"its target {target.name} is not intact: {reason}"
    return None


def _newest_intact_file(
    listing: Listing, skip: set[str], cache: VerifyCache, limits: FormatLimits
) -> Entry | None:
    """The newest intact Lightning checkpoint file (discovery's order), not a symlink."""
    for entry in listing.candidates:
        if entry.name in skip or entry.is_dir or entry.is_symlink:
            continue
        if not entry.name.endswith(LIGHTNING_SUFFIX):
            continue
        if examine(entry, full=True, cache=cache, limits=limits).state is CheckpointState.INTACT:
            return entry
    return None


def _repair(root: Path, entry: Entry, problem: str, source: Entry | None, ops: FsOps) -> Repair:
    if source is None:
        moved = quarantine(root, entry.name, QuarantineReason.INVALID, detail=problem, ops=ops)
        repair = Repair(RepairKind.ALIAS_SET_ASIDE, entry.name, entry.path, None, problem, moved)
    elif entry.is_symlink:
        temporary = root / f".{entry.name}.restore-{os.getpid()}"
        os.symlink(source.name, temporary)
        ops.replace(temporary, entry.path)
        ops.fsync_dir(root)
        repair = Repair(
            RepairKind.ALIAS_RELINKED, entry.name, entry.path, source.path, problem, None
        )
    else:
        # Copy first, keep the torn one, then one rename: a crash at any point leaves either
        # the torn alias (repaired again next time) or the restored one, never no alias.
        temporary = root / f".{entry.name}.restore-{os.getpid()}"
        _durable_copy(source.path, temporary, ops)
        kept = _keep_in_quarantine(root, entry, problem, ops)
        ops.replace(temporary, entry.path)
        ops.fsync_dir(root)
        repair = Repair(
            RepairKind.ALIAS_RESTORED, entry.name, entry.path, source.path, problem, kept
        )
    logger.warning("before resuming: %s", repair.describe())
    return repair


def _durable_copy(source: Path, destination: Path, ops: FsOps) -> None:
    fd = ops.create(destination)
    try:
        with open(source, "rb") as handle:
            while chunk := handle.read(COPY_CHUNK_BYTES):
                ops.write(fd, chunk)
        ops.fsync(fd)
    except BaseException:
        ops.close(fd)
        destination.unlink(missing_ok=True)
        raise
    ops.close(fd)


def _keep_in_quarantine(root: Path, entry: Entry, problem: str, ops: FsOps) -> Quarantined:
    """A second name for the torn file in quarantine (a hard link: no copy), with its
    manifest, which no longer describes what will be under the alias."""
    qdir = root / QUARANTINE_DIR
    if not qdir.is_dir():
        ops.mkdir(qdir)
        ops.fsync_dir(root)
    reason = QuarantineReason.INVALID
    destination = qdir / quarantine_name(entry.name, reason, os.listdir(qdir))
    ops.mkdir(destination)
    try:
        os.link(entry.path, destination / entry.name)
    except OSError:
        shutil.copyfile(entry.path, destination / entry.name)
    manifest = adopted_manifest_path(entry.path)
    if os.path.lexists(manifest):
        ops.replace(manifest, destination / manifest.name)
    ops.fsync_dir(destination)
    ops.fsync_dir(qdir)
    return Quarantined(entry.name, entry.path, destination, reason, problem)


def _remove_restore_leftovers(root: Path, ops: FsOps) -> None:
    """Temporaries of a repair cut short (by a crash) are removed, never used."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        if _RESTORE_TEMP_RE.fullmatch(name):
            logger.warning("removing %s: the leftover of an interrupted repair", root / name)
            ops.remove_tree(root / name)


# -- metrics --------------------------------------------------------------------------


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite real numbers among `values` (anything with `float()`: tensors, numpy)."""
    result: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue  # not a scalar (a tensor of many elements, a string)
        if math.isfinite(number):
            result[str(name)] = number
    return result


def record_metrics(
    path: Path,
    metrics: Mapping[str, float],
    *,
    run_id: str = "",
    attempt: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> Adopted:
    """Adopt a framework checkpoint that was just saved, with `metrics` in its manifest's meta.

    Call it from the trainer right after the framework's save returned. The supervisor's
    directory watcher adopts the same checkpoint later without metrics; it keeps a manifest
    that is still fresh, so the manifest is made to look as new as the checkpoint
    (a directory's own mtime moves when the manifest is renamed into it).
    """
    wanted = finite_metrics(metrics)
    full_meta = {**dict(meta or {}), METRICS_KEY: wanted}
    adopted = adopt(path, run_id=run_id, attempt=attempt, meta=full_meta)
    if recorded_metrics(adopted.manifest.meta) != wanted:
        # A manifest written by someone else (the watcher) was fresh: replace it.
        adopted.manifest_path.unlink(missing_ok=True)
        adopted = adopt(path, run_id=run_id, attempt=attempt, meta=full_meta)
    if path.is_dir() and not path.is_symlink():
        newest_ns = os.lstat(path).st_mtime_ns
        st = os.lstat(adopted.manifest_path)
        if st.st_mtime_ns < newest_ns:
            os.utime(adopted.manifest_path, ns=(st.st_atime_ns, newest_ns))
    return adopted
