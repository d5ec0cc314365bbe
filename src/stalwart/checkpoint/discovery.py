"""Discovery: which checkpoint to resume from.

Newest first, stop at the first that passes full verification: old checkpoints are never
hashed just to be listed. Results are cached by CacheKey (name, newest mtime, total size)
in a VerifyCache so a restart does not re-hash unchanged checkpoints; the supervisor gives
a journal-backed cache, tests and one-shot commands an in-memory one.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stalwart.checkpoint.detection import lookalike_reason
from stalwart.checkpoint.errors import CheckpointInvalid, Defect
from stalwart.checkpoint.foreign import (
    DEFAULT_LIMITS,
    ForeignFormat,
    FormatLimits,
    FormatStatus,
    check_foreign,
)
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import (
    Entry,
    EntryKind,
    Listing,
    QuarantineReason,
    parse_staging,
    scan,
)
from stalwart.checkpoint.manifest import Manifest
from stalwart.checkpoint.quarantine import Quarantined, quarantine
from stalwart.checkpoint.verify import (
    DEFAULT_CHUNK_BYTES,
    CacheKey,
    full_check,
    has_manifest,
    quick_check,
    site_of,
)
from stalwart.types import CheckpointState

logger = logging.getLogger(__name__)


class VerifyCache(Protocol):
    """Remembers verification results; a key changes whenever a listed file is rewritten."""

    def get(self, key: CacheKey) -> bool | None:
        """True: verified intact; False: verified corrupt; None: not known."""
        ...

    def put(self, key: CacheKey, intact: bool) -> None: ...


class MemoryVerifyCache:
    """A VerifyCache in memory, oldest entries dropped beyond `max_entries`."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._results: OrderedDict[CacheKey, bool] = OrderedDict()

    def get(self, key: CacheKey) -> bool | None:
        return self._results.get(key)

    def put(self, key: CacheKey, intact: bool) -> None:
        self._results[key] = intact
        self._results.move_to_end(key)
        while len(self._results) > self.max_entries:
            self._results.popitem(last=False)

    def __len__(self) -> int:
        return len(self._results)


class VerifiedBy(enum.Enum):
    MANIFEST = "manifest"
    """Sizes (quick) and digests (full) against MANIFEST.json."""
    FORMAT = "format"
    """Format checks of a foreign checkpoint without a manifest."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk and what verification said about it."""

    name: str
    path: Path
    kind: EntryKind
    step: int | None
    state: CheckpointState
    reason: str
    verified_by: VerifiedBy | None
    size_bytes: int | None
    mtime_ns: int
    manifest: Manifest | None = None
    format: ForeignFormat | None = None
    cached: bool = False
    """The verdict came from the cache (nothing was hashed)."""
    problem: CheckpointInvalid | None = None
    recognized: bool = True
    """False: not a checkpoint stalwart can check: never resumed from, quarantined, pruned."""


def _info(
    entry: Entry,
    state: CheckpointState,
    reason: str,
    *,
    verified_by: VerifiedBy | None = None,
    size_bytes: int | None = None,
    manifest: Manifest | None = None,
    format: ForeignFormat | None = None,
    cached: bool = False,
    problem: CheckpointInvalid | None = None,
    step: int | None = None,
    recognized: bool = True,
) -> CheckpointInfo:
    return CheckpointInfo(
        name=entry.name,
        path=entry.path,
        kind=entry.kind,
        step=entry.step if step is None else step,
        state=state,
        reason=reason,
        verified_by=verified_by,
        size_bytes=size_bytes,
        mtime_ns=entry.mtime_ns,
        manifest=manifest,
        format=format,
        cached=cached,
        problem=problem,
        recognized=recognized,
    )


def _by_manifest(
    entry: Entry, *, full: bool, cache: VerifyCache | None, chunk_bytes: int
) -> CheckpointInfo:
    try:
        manifest, key = quick_check(entry.path, name=entry.name)
    except CheckpointInvalid as invalid:
        return _info(
            entry,
            CheckpointState.CORRUPT,
            invalid.reason,
            verified_by=VerifiedBy.MANIFEST,
            problem=invalid,
        )
    known = cache.get(key) if cache is not None else None
    problem: CheckpointInvalid | None = None
    if known is True:
        state, reason = CheckpointState.INTACT, "intact (cached)"
    elif known is False:
        problem = CheckpointInvalid(entry.name, None, Defect.DIGEST_MISMATCH, "failed before")
        state, reason = CheckpointState.CORRUPT, "failed verification earlier (cached)"
    elif not full:
        state, reason = CheckpointState.UNVERIFIED, "sizes match; digests not checked"
    else:
        try:
            full_check(entry.path, manifest, name=entry.name, chunk_bytes=chunk_bytes)
            state, reason = CheckpointState.INTACT, "intact"
        except CheckpointInvalid as failed:
            problem = failed
            state, reason = CheckpointState.CORRUPT, failed.reason
        if cache is not None:
            cache.put(key, problem is None)
    return _info(
        entry,
        state,
        reason,
        verified_by=VerifiedBy.MANIFEST,
        size_bytes=key.size_bytes,
        manifest=manifest,
        cached=known is not None,
        problem=problem,
    )


def _manifest_is_stale(entry: Entry) -> bool:
    """An adopted file rewritten in place since (Lightning's last.ckpt): re-check by format."""
    if entry.is_dir:
        return False
    try:
        return os.lstat(entry.path).st_mtime_ns > os.lstat(site_of(entry.path).manifest).st_mtime_ns
    except FileNotFoundError:
        return False


def _by_format(
    entry: Entry, *, full: bool, cache: VerifyCache | None, limits: FormatLimits
) -> CheckpointInfo:
    verdict = check_foreign(entry.path, full=False, limits=limits)
    if verdict.valid and full:
        key = verdict.key()
        known = cache.get(key) if cache is not None else None
        if known is None:
            verdict = check_foreign(entry.path, full=True, limits=limits)
            if cache is not None and verdict.status is not FormatStatus.UNRECOGNIZED:
                cache.put(key, verdict.valid)
        elif known is False:
            problem = CheckpointInvalid(entry.name, None, Defect.FORMAT_INVALID, "failed before")
            return _info(
                entry, CheckpointState.CORRUPT, "failed its format check earlier (cached)",
                verified_by=VerifiedBy.FORMAT, size_bytes=verdict.size_bytes,
                format=verdict.format, cached=True, problem=problem, step=verdict.step,
            )  # fmt: skip
    state = {
        FormatStatus.VALID: CheckpointState.INTACT if full else CheckpointState.UNVERIFIED,
        FormatStatus.INVALID: CheckpointState.CORRUPT,
        FormatStatus.UNRECOGNIZED: CheckpointState.UNVERIFIED,
    }[verdict.status]
    reason = verdict.reason if full or not verdict.valid else "structure valid; CRCs not checked"
    return _info(
        entry, state, reason,
        verified_by=VerifiedBy.FORMAT, size_bytes=verdict.size_bytes, format=verdict.format,
        problem=verdict.problem, step=verdict.step,
        recognized=verdict.status is not FormatStatus.UNRECOGNIZED,
    )  # fmt: skip


def alias_target(path: Path) -> Path | None:
    """The sibling a symlink names (Lightning's `save_last="link"`: `last.ckpt -> epoch=...`).

    Only a bare name of an existing entry in the same directory counts: such a link is an
    alias, never resumed from itself (its target is). Anything else is not an alias and
    fails verification like any symlink.
    """
    try:
        text = os.readlink(path)
    except OSError:
        return None
    if not text or "/" in text or text in (".", "..") or text == path.name:
        return None
    target = path.with_name(text)
    return target if os.path.lexists(target) and not target.is_symlink() else None


def examine(
    entry: Entry,
    *,
    full: bool = True,
    cache: VerifyCache | None = None,
    limits: FormatLimits = DEFAULT_LIMITS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> CheckpointInfo:
    """Verify one entry of a Listing: by its manifest if it has one, else by its format."""
    if entry.kind is EntryKind.STAGING:
        return _info(entry, CheckpointState.STAGING, "save in progress or interrupted")
    if entry.kind is EntryKind.QUARANTINED:
        return _info(entry, CheckpointState.QUARANTINED, "in quarantine")
    if entry.kind is EntryKind.DELETING:
        return _info(entry, CheckpointState.STAGING, "prune in progress or interrupted")
    if entry.kind is EntryKind.FOREIGN and entry.is_symlink:
        target = alias_target(entry.path)
        if target is not None:
            return _info(
                entry,
                CheckpointState.UNVERIFIED,
                f"alias of {target.name} (a symlink; its target is checked on its own)",
            )
    if entry.kind is EntryKind.MANAGED or has_manifest(entry.path):
        info = _by_manifest(entry, full=full, cache=cache, chunk_bytes=chunk_bytes)
        if (
            entry.kind is EntryKind.FOREIGN
            and info.state is CheckpointState.CORRUPT
            and _manifest_is_stale(entry)
        ):
            return _by_format(entry, full=full, cache=cache, limits=limits)
        return info
    return _by_format(entry, full=full, cache=cache, limits=limits)


@dataclass(frozen=True)
class Discovery:
    """The newest intact checkpoint and the newer ones that were skipped, with reasons."""

    newest: CheckpointInfo | None
    skipped: tuple[CheckpointInfo, ...]
    listing: Listing


def find_newest_intact(
    root: Path,
    *,
    cache: VerifyCache | None = None,
    foreign_globs: Sequence[str] = (),
    limits: FormatLimits = DEFAULT_LIMITS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    listing: Listing | None = None,
    exclude: Collection[str] = (),
) -> Discovery:
    """Newest first, stop at the first checkpoint that passes full verification (reads only).

    `exclude`: names never to resume from although they are in place (quarantined in
    memory only: they could not be moved), skipped as quarantined.
    """
    if listing is None:
        listing = scan(root, foreign_globs)
    skipped: list[CheckpointInfo] = []
    for entry in listing.candidates:
        if entry.name in exclude:
            reason = "quarantined, but it could not be moved aside; never resumed from again"
            skipped.append(_info(entry, CheckpointState.QUARANTINED, reason))
            continue
        info = examine(entry, full=True, cache=cache, limits=limits, chunk_bytes=chunk_bytes)
        if info.state is CheckpointState.INTACT:
            return Discovery(info, tuple(skipped), listing)
        skipped.append(info)
    return Discovery(None, tuple(skipped), listing)


@dataclass(frozen=True)
class Leftovers:
    """What remove_leftovers did."""

    removed: tuple[Path, ...]
    stuck: tuple[Path, ...] = ()
    """Leftovers that could not be removed (an immutable file inside, permissions, a
    read-only mount): left in place. They are never resumed from, so nothing depends on
    them being gone."""


def remove_leftovers(
    root: Path,
    *,
    ops: FsOps | None = None,
    listing: Listing | None = None,
    staging: bool = True,
    deleting: bool = True,
    reported: Collection[Path] = (),
) -> Leftovers:
    """Remove staging directories of interrupted saves (`staging`) and half-done prunes
    (`deleting`); report each. One that cannot be removed is logged with what to do and
    left in place; `reported` are such leftovers already logged (tried again, quietly).

    Call it only when no writer of that kind is running: the supervisor before launching
    the trainer; on a directory shared by several nodes, a save in progress may be another
    node's, so there the trainer's rank 0 removes staging when every rank is resuming.
    """
    ops = ops or FsOps()
    if listing is None:
        listing = scan(root)
    removed: list[Path] = []
    stuck: list[Path] = []
    chosen = (*(listing.staging if staging else ()), *(listing.deleting if deleting else ()))
    for entry in chosen:
        quiet = entry.path in reported
        staged = parse_staging(entry.name)
        if not quiet and staged is not None:
            logger.warning(
                "removing %s: a save of step %d by pid %d that never committed",
                entry.path,
                staged[0],
                staged[1],
            )
        elif not quiet:
            logger.warning("removing %s: an interrupted prune", entry.path)
        try:
            ops.remove_tree(entry.path)
        except OSError as exc:
            stuck.append(entry.path)
            if not quiet:
                logger.error(
                    "cannot remove %s (%s); leaving it and going on (it is never resumed "
                    "from). Remove it by hand: check `lsattr -R` (chattr -i an immutable "
                    "file), its permissions, and whether the file system is read-only",
                    entry.path,
                    exc,
                )
            continue
        removed.append(entry.path)
    return Leftovers(tuple(removed), tuple(stuck))


def tree_bytes(path: Path) -> int:
    """Total size of the regular files under `path` (or of `path`); symlinks not followed.
    What vanishes meanwhile (a save committing its staging directory) counts as 0."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def list_checkpoints(
    root: Path,
    *,
    full: bool = False,
    cache: VerifyCache | None = None,
    foreign_globs: Sequence[str] = (),
    limits: FormatLimits = DEFAULT_LIMITS,
) -> list[CheckpointInfo]:
    """Every checkpoint, staging and quarantined entry, newest first, each with its state."""
    listing = scan(root, foreign_globs)
    infos = [examine(e, full=full, cache=cache, limits=limits) for e in listing.candidates]
    for look in listing.lookalikes:  # reported only
        reason = lookalike_reason(look.name)
        infos.append(_info(look, CheckpointState.UNVERIFIED, reason, recognized=False))
    for entry in (*listing.staging, *listing.deleting, *listing.quarantined):
        info = examine(entry)
        infos.append(_info(entry, info.state, info.reason, size_bytes=tree_bytes(entry.path)))
    return infos


@dataclass(frozen=True)
class ResumeDecision:
    """What a (re)start resumes from, and everything done or skipped on the way."""

    resume_from: CheckpointInfo | None
    skipped: tuple[CheckpointInfo, ...]
    """Newer checkpoints that were not resumed from, newest first, each with its reason."""
    quarantined: tuple[Quarantined, ...]
    removed_leftovers: tuple[Path, ...]
    stuck_leftovers: tuple[Path, ...] = ()
    """Leftovers that could not be removed (see Leftovers.stuck)."""

    @property
    def env_value(self) -> str:
        """STALWART_RESUME_FROM: the checkpoint's path, or empty for a fresh start."""
        return str(self.resume_from.path) if self.resume_from is not None else ""


def prepare_resume(
    root: Path,
    *,
    cache: VerifyCache | None = None,
    foreign_globs: Sequence[str] = (),
    ops: FsOps | None = None,
    limits: FormatLimits = DEFAULT_LIMITS,
    remove_staging: bool = True,
    remove_deleting: bool = True,
    reported_leftovers: Collection[Path] = (),
    exclude: Collection[str] = (),
) -> ResumeDecision:
    """At each (re)start, before the trainer runs: clean leftovers, find the newest intact
    checkpoint, and quarantine the newer ones that failed verification.

    Unrecognized foreign entries are skipped but left alone: they may not be checkpoints.
    `remove_staging`, `remove_deleting`, `reported_leftovers`: see remove_leftovers (False
    on shared directories); `exclude`: see find_newest_intact.
    """
    ops = ops or FsOps()
    listing = scan(root, foreign_globs)
    leftovers = remove_leftovers(
        root,
        ops=ops,
        listing=listing,
        staging=remove_staging,
        deleting=remove_deleting,
        reported=reported_leftovers,
    )
    found = find_newest_intact(root, cache=cache, limits=limits, listing=listing, exclude=exclude)
    quarantined = []
    for info in found.skipped:
        if info.state is not CheckpointState.CORRUPT:
            logger.info("not resuming from %s: %s", info.name, info.reason)
            continue
        reason = QuarantineReason.CORRUPT
        if info.verified_by is VerifiedBy.FORMAT:
            reason = QuarantineReason.INVALID
        try:
            quarantined.append(quarantine(root, info.name, reason, detail=info.reason, ops=ops))
        except OSError as exc:
            logger.error("could not quarantine %s: %s; it is skipped anyway", info.path, exc)
    if found.newest is None:
        logger.info("no intact checkpoint in %s; starting fresh", root)
    else:
        logger.info(
            "resuming from %s (step %s, %s)%s",
            found.newest.path,
            found.newest.step,
            found.newest.reason,
            f"; skipped newer: {', '.join(i.name for i in found.skipped)}" if found.skipped else "",
        )
    return ResumeDecision(
        found.newest, found.skipped, tuple(quarantined), leftovers.removed, leftovers.stuck
    )
