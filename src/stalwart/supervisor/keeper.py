"""Keeping the job's checkpoints: verified resume, quarantine records, retention, observation.

Glue between the checkpoint store (`stalwart.checkpoint`, which knows files) and
the journal (which remembers): verification verdicts are cached in the journal,
every quarantine is journaled, retention runs off the loop in a background job.
A lock keeps retention and adoption from touching the directory while the loop
picks the checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stalwart.checkpoint import (
    CacheKey,
    CheckpointObserver,
    CheckpointState,
    FsOps,
    HashAlgo,
    Quarantined,
    QuarantineReason,
    ResumeDecision,
    RetentionPlan,
    RetentionPolicy,
    WriteObserved,
    adopt,
    apply_retention,
    disk_free_bytes,
    list_checkpoints,
    plan_retention,
    prepare_resume,
    quarantine,
    retention_items,
    scan,
)
from stalwart.checkpoint.config import CheckpointConfig
from stalwart.checkpoint.frameworks import repair_for_resume
from stalwart.checkpoint.layout import QUARANTINE_DIR
from stalwart.checkpoint.tiers import newer_decision
from stalwart.clock import Clock
from stalwart.journal import Journal, QuarantineRecord

logger = logging.getLogger(__name__)


class JournalVerifyCache:
    """Verification verdicts by (name, mtime, size) in the journal: a restart does not re-hash."""

    def __init__(self, journal: Journal, root: Path) -> None:
        self._journal = journal
        self._root = str(root)

    def get(self, key: CacheKey) -> bool | None:
        return self._journal.cached_verdict(self._root, key.name, key.mtime_ns, key.size_bytes)

    def put(self, key: CacheKey, intact: bool) -> None:
        self._journal.cache_verdict(self._root, key.name, key.mtime_ns, key.size_bytes, intact)


@dataclass(frozen=True)
class RetentionDone:
    """Posted to the loop by the background retention job."""

    plan: RetentionPlan | None
    deleted: tuple[Path, ...]
    error: str = ""


@dataclass(frozen=True)
class AdoptionDone:
    name: str
    ok: bool
    detail: str


class CheckpointKeeper:
    def __init__(
        self,
        config: CheckpointConfig,
        root: Path,
        journal: Journal,
        run_id: str,
        clock: Clock,
        *,
        ops: FsOps | None = None,
        memory_root: Path | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.memory_root = memory_root
        """The job's memory tier (checkpoint/tiers.py), searched too when resuming."""
        self.memory_found: bool | None = None
        """Whether the last resume found an intact checkpoint in the memory tier (None: no
        tier). Written by the resume thread before it posts its result."""
        self._journal = journal
        self._run_id = run_id
        self._clock = clock
        self._ops = ops or FsOps()
        self.lock = threading.Lock()
        self._observer: CheckpointObserver | None = None
        self._stuck_leftovers: tuple[Path, ...] = ()
        """Leftovers that could not be removed, already logged (not logged again)."""
        self.excluded: frozenset[str] = frozenset()
        """Checkpoints quarantined in memory only (they could not be moved): never resumed
        from again by this supervisor. Replaced under `lock` (the resume thread reads it)."""

    def prepare_resume(
        self,
        *,
        remove_staging: bool = True,
        remove_deleting: bool = True,
        journal: Journal | None = None,
    ) -> ResumeDecision:
        """The newest intact checkpoint; newer broken ones are quarantined and journaled.

        On a directory shared by several nodes, another node's save or prune may be in
        progress: `remove_staging` / `remove_deleting` False leave those leftovers alone.
        """
        journal = journal or self._journal  # a thread of its own passes its own connection
        with self.lock:
            # Framework aliases first (Lightning's last.ckpt, torn HF checkpoint-N/):
            # a framework resumes from them by name, not from STALWART_RESUME_FROM.
            repairs = repair_for_resume(
                self.root,
                self.config.foreign_globs,
                cache=JournalVerifyCache(journal, self.root),
            )
            decision = prepare_resume(
                self.root,
                cache=JournalVerifyCache(journal, self.root),
                foreign_globs=self.config.foreign_globs,
                ops=self._ops,
                remove_staging=remove_staging,
                remove_deleting=remove_deleting,
                reported_leftovers=self._stuck_leftovers,
                exclude=self.excluded,
            )
            self._stuck_leftovers = decision.stuck_leftovers
            if self.memory_root is not None:
                self.memory_found = False
            if self.memory_root is not None and self.memory_root.is_dir():
                # No verify cache: a memory checkpoint is hashed in full every time (fast).
                in_memory = prepare_resume(self.memory_root, ops=self._ops, exclude=self.excluded)
                self.memory_found = in_memory.resume_from is not None
                decision = newer_decision(decision, in_memory)
        for repair in repairs:
            logger.warning("%s", repair.describe())
            if repair.quarantined is not None:
                self._record(repair.quarantined, journal=journal)
        for moved in decision.quarantined:
            logger.warning(
                "quarantined checkpoint %s (%s: %s) -> %s",
                moved.name,
                moved.reason.value,
                moved.detail,
                moved.destination,
            )
            self._record(moved, journal=journal)
        return decision

    def _record(
        self, moved: Quarantined, *, destination: str | None = None, journal: Journal | None = None
    ) -> None:
        (journal or self._journal).add_quarantine(
            QuarantineRecord(
                run_id=self._run_id,
                name=moved.name,
                source=str(moved.source),
                destination=str(moved.destination) if destination is None else destination,
                reason=moved.reason.value,
                detail=moved.detail,
                at_unix=self._clock.wall(),
            )
        )

    def names_after(self, step: int) -> list[str]:
        """Checkpoints of a step after `step`, in either tier, newest first (a divergence
        rollback quarantines them)."""
        names: dict[str, int] = {}
        for root in (self.root, self.memory_root):
            if root is None or not root.is_dir():
                continue
            with self.lock:
                listing = scan(root, self.config.foreign_globs)
            for entry in listing.candidates:
                if entry.step is not None and entry.step > step:
                    names.setdefault(entry.name, entry.step)
        return sorted(names, key=lambda name: names[name], reverse=True)

    def quarantine(self, name: str, reason: QuarantineReason, detail: str) -> Path | None:
        """Move a checkpoint aside (never deleted) and journal it; where it went.

        When it cannot be moved (a read-only or immutable directory): it is quarantined
        in memory instead (never resumed from again by this supervisor), journaled with
        an empty destination, and None is returned.
        """
        memory = self.memory_root
        if memory is not None and (memory / name).exists():
            # The same step in the memory tier is the same state: never resumed from either.
            try:
                with self.lock:
                    self._record(quarantine(memory, name, reason, detail=detail, ops=self._ops))
            except OSError as exc:
                with self.lock:
                    self.excluded = self.excluded | {name}
                logger.error("cannot quarantine %s in the memory tier: %s", name, exc)
            if not (self.root / name).exists():
                return memory / QUARANTINE_DIR
        try:
            with self.lock:
                moved = quarantine(self.root, name, reason, detail=detail, ops=self._ops)
        except OSError as exc:
            with self.lock:
                self.excluded = self.excluded | {name}
            logger.error(
                "cannot move checkpoint %s into %s (%s); it stays in place and this "
                "supervisor will not resume from it again. Move it there by hand (once the "
                "directory is writable) before the next `stalwart run`, or a restarted "
                "supervisor may resume from it again",
                name,
                self.root / QUARANTINE_DIR,
                exc,
            )
            note = f"not moved ({exc}): skipped in memory by the supervisor that found it"
            stayed = Quarantined(name, self.root / name, self.root / name, reason, detail)
            self._record(
                dataclasses.replace(stayed, detail=f"{detail}; {note}" if detail else note),
                destination="",
            )
            return None
        self._record(moved)
        return moved.destination

    # observation (the observer calls `post` from its own thread)

    def start_observer(self, post: Callable[[object], None]) -> None:
        if not self.config.observe:
            return
        self._observer = CheckpointObserver(
            self.root,
            post,
            foreign_globs=self.config.foreign_globs,
            quiescence_s=self.config.quiescence_s,
        )
        self._observer.start()

    def stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    # background jobs: each opens its own journal connection (SQLite objects stay in
    # the thread that made them) and holds the lock while it touches the directory.

    def retain(
        self,
        journal_path: Path,
        expected_save_bytes: int | None,
        busy: frozenset[str] = frozenset(),
    ) -> RetentionDone:
        """One retention pass; never raises (the loop waits for its answer). `busy`
        checkpoints (being uploaded) are pinned for this pass."""
        try:
            return self._retain(journal_path, expected_save_bytes, busy)
        except Exception as exc:
            logger.exception("retention pass failed")
            return RetentionDone(None, (), f"{type(exc).__name__}: {exc}")

    def _retain(
        self, journal_path: Path, expected_save_bytes: int | None, busy: frozenset[str]
    ) -> RetentionDone:
        policy = RetentionPolicy(
            keep_last=self.config.keep_last,
            keep_every_steps=self.config.keep_every_steps,
            min_free_bytes=self.config.min_free_bytes,
            keep_best=self.config.keep_best,
            best_metric=self.config.best_metric,
            best_mode=self.config.best_mode,
        )
        with Journal(journal_path) as journal, self.lock:
            journal.survive_failures()  # a verdict not cached is only hashed again
            infos = list_checkpoints(
                self.root,
                full=True,
                cache=JournalVerifyCache(journal, self.root),
                foreign_globs=self.config.foreign_globs,
            )
            plan = plan_retention(
                retention_items(infos, pinned=[*self.config.pinned, *busy]),
                policy,
                free_bytes=disk_free_bytes(self.root) if self.config.min_free_bytes else None,
                expected_save_bytes=expected_save_bytes,
            )
            deleted = tuple(apply_retention(self.root, plan)) if plan.delete else ()
        return RetentionDone(plan, deleted)

    def adopt(self, event: WriteObserved, run_id: str, attempt: int) -> AdoptionDone:
        with self.lock:
            try:
                adopted = adopt(
                    event.path, run_id=run_id, attempt=attempt, hash_algo=HashAlgo.XXH3_128
                )
            except Exception as exc:  # NotStable, CheckpointInvalid, OSError: report, never crash
                return AdoptionDone(event.name, False, str(exc))
        return AdoptionDone(event.name, True, f"manifest written: {adopted.manifest_path}")


def newest_intact_size(root: Path, foreign_globs: list[str]) -> int | None:
    """Size of the newest checkpoint by a quick look (the next save is about as big)."""
    for info in list_checkpoints(root, full=False, foreign_globs=foreign_globs):
        if info.state is CheckpointState.INTACT and info.size_bytes:
            return info.size_bytes
    return None
