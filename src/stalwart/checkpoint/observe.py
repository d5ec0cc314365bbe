"""Observation of the checkpoint directory (watchdog) and adoption of foreign checkpoints.

A trainer that saves on its own (no stalwart client) still tells us what a checkpoint
costs: the observer measures each write from its first file event to its last close-write,
declares it finished after `quiescence_s` without events, and reports it (duration, bytes,
format check) through the callback the caller gives. It never acts: the supervisor loop
decides whether to `adopt()` it, i.e. write a manifest beside it so later verification
uses digests instead of format checks.

Saves through the store are observed too (staging directory to rename), which gives their
duration without any help from the trainer.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from stalwart.checkpoint.discovery import tree_bytes
from stalwart.checkpoint.errors import CheckpointInvalid, Defect, NotStable
from stalwart.checkpoint.foreign import (
    DEFAULT_LIMITS,
    FormatLimits,
    FormatStatus,
    FormatVerdict,
    check_foreign,
)
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.layout import (
    ADOPTED_SUFFIX,
    DELETING_PREFIX,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    STAGING_PREFIX,
    matches_foreign,
    parse_staging,
    parse_step,
)
from stalwart.checkpoint.manifest import FileEntry, HashAlgo, Manifest, render_manifest
from stalwart.checkpoint.seal import seal, write_durable
from stalwart.checkpoint.verify import file_digest, quick_check, site_of
from stalwart.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

WRITE_EVENTS = frozenset((EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED))
"""Reads (opened, closed_no_write) are not activity: our own verification must not count."""


@dataclass(frozen=True)
class Activity:
    """File events under one top-level name, from first to last."""

    name: str
    first_event_s: float
    last_event_s: float
    last_close_write_s: float | None


class WriteTracker:
    """Pure bookkeeping of write activity per top-level name; time is passed in."""

    def __init__(self, quiescence_s: float) -> None:
        self.quiescence_s = quiescence_s
        self._active: dict[str, Activity] = {}

    def record(self, name: str, now_s: float, *, close_write: bool) -> None:
        old = self._active.get(name)
        first_s = old.first_event_s if old else now_s
        closed_s = now_s if close_write else (old.last_close_write_s if old else None)
        self._active[name] = Activity(name, first_s, now_s, closed_s)

    def rename(self, old: str, new: str, now_s: float) -> None:
        """`old` became `new` (a commit, or a trainer's tmp-then-rename): one write, continued."""
        previous = self._active.pop(old, None)
        first_s = previous.first_event_s if previous else now_s
        if new in self._active:
            first_s = min(first_s, self._active[new].first_event_s)
        self._active[new] = Activity(new, first_s, now_s, now_s)

    def next_due_s(self) -> float | None:
        if not self._active:
            return None
        return min(a.last_event_s for a in self._active.values()) + self.quiescence_s

    def settled(self, now_s: float) -> list[Activity]:
        """Activities quiet for `quiescence_s`, removed from the tracker."""
        done = [a for a in self._active.values() if now_s - a.last_event_s >= self.quiescence_s]
        for activity in done:
            del self._active[activity.name]
        return sorted(done, key=lambda a: a.first_event_s)

    def __len__(self) -> int:
        return len(self._active)


class WriteKind(enum.Enum):
    MANAGED = "managed"
    """Committed through the store (staging directory renamed to step-N)."""
    FOREIGN = "foreign"
    """Written by the trainer itself: matched by a foreign glob, or a known layout."""


@dataclass(frozen=True)
class WriteObserved:
    """One finished checkpoint write, as seen from outside the trainer."""

    name: str
    path: Path
    kind: WriteKind
    duration_s: float
    """First event to last close-write (or last event when close-writes are not reported)."""
    size_bytes: int
    first_event_s: float
    settled_s: float
    """When quiescence was declared (monotonic): duration_s + quiescence_s after the start."""
    format: FormatVerdict | None
    """Foreign only: the full format check at settlement."""


class _Handler(FileSystemEventHandler):
    def __init__(self, observer: CheckpointObserver) -> None:
        self._observer = observer

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._observer.on_event(event)


def _top(root: str, path: bytes | str) -> tuple[str, str] | None:
    """(top-level name, rest) of a path under root, or None outside root or at root itself."""
    text = os.fsdecode(path)
    if not text.startswith(root + os.sep):
        return None
    top, _, rest = text[len(root) + 1 :].partition(os.sep)
    return top, rest


def _ours(top: str, rest: str) -> bool:
    """Events caused by stalwart itself (quarantine, prune, adoption manifests)."""
    if top == QUARANTINE_DIR or top.startswith(DELETING_PREFIX) or top.endswith(ADOPTED_SUFFIX):
        return True
    if top.startswith(".") and ADOPTED_SUFFIX in top:
        return True  # the temporary of a manifest written beside a file
    leaf = rest.rsplit(os.sep, 1)[-1]
    in_staging = top.startswith(STAGING_PREFIX)
    return not in_staging and (leaf == MANIFEST_NAME or leaf.startswith("." + MANIFEST_NAME))


class CheckpointObserver:
    """Watches `root` and reports finished writes to `report` (called from its own thread)."""

    def __init__(
        self,
        root: Path,
        report: Callable[[WriteObserved], None],
        *,
        foreign_globs: Sequence[str] = (),
        quiescence_s: float = 2.0,
        clock: Clock | None = None,
        check_format: bool = True,
        limits: FormatLimits = DEFAULT_LIMITS,
    ) -> None:
        self.root = Path(root).absolute()
        self._root_text = str(self.root)
        self._report = report
        self._globs = tuple(foreign_globs)
        self._clock: Clock = clock or SystemClock()
        self._check_format = check_format
        self._limits = limits
        self._tracker = WriteTracker(quiescence_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._observer: Any = None
        self._settler: threading.Thread | None = None

    def start(self) -> None:
        observer = Observer()
        observer.schedule(_Handler(self), self._root_text, recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._settler = threading.Thread(target=self._settle_loop, name="stalwart-ckpt-observe")
        self._settler.daemon = True
        self._settler.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        if self._settler is not None:
            self._settler.join()
            self._settler = None

    def __enter__(self) -> CheckpointObserver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def on_event(self, event: FileSystemEvent) -> None:
        """Turn one watchdog event into tracker bookkeeping (watchdog's thread)."""
        now_s = self._clock.monotonic()
        src = _top(self._root_text, event.src_path)
        if event.event_type == EVENT_TYPE_MOVED:
            dest = _top(self._root_text, event.dest_path)
            if src is None or dest is None or _ours(*src) or _ours(*dest):
                return
            with self._lock:
                was_idle = len(self._tracker) == 0
                if src[0] != dest[0]:
                    self._tracker.rename(src[0], dest[0], now_s)
                else:
                    self._tracker.record(dest[0], now_s, close_write=False)
        elif event.event_type in WRITE_EVENTS:
            if src is None or _ours(*src) or (event.is_directory and not src[1]):
                return  # the root's own "modified" and top-level dir mtimes are not writes
            with self._lock:
                was_idle = len(self._tracker) == 0
                self._tracker.record(
                    src[0], now_s, close_write=event.event_type == EVENT_TYPE_CLOSED
                )
        else:
            return
        if was_idle:
            self._wake.set()

    def _settle_loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                due_s = self._tracker.next_due_s()
            timeout = None if due_s is None else max(0.0, due_s - self._clock.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            with self._lock:
                if self._stopping:
                    return
                now_s = self._clock.monotonic()
                done = self._tracker.settled(now_s)
            for activity in done:
                observed = self._observe(activity, now_s)
                if observed is None:
                    continue
                try:
                    self._report(observed)
                except Exception:
                    logger.exception("checkpoint observation callback failed")

    def _observe(self, activity: Activity, now_s: float) -> WriteObserved | None:
        name = activity.name
        path = self.root / name
        if parse_step(name) is not None:
            kind = WriteKind.MANAGED
        elif parse_staging(name) is None and matches_foreign(name, self._globs, path):
            kind = WriteKind.FOREIGN
        else:
            return None  # staging that never committed, or not a checkpoint
        try:
            size_bytes = tree_bytes(path)
        except FileNotFoundError:
            return None  # written, then removed (a trainer's own rotation)
        verdict = None
        if kind is WriteKind.FOREIGN and self._check_format:
            verdict = check_foreign(path, full=True, limits=self._limits)
        end_s = activity.last_close_write_s or activity.last_event_s
        observed = WriteObserved(
            name=name,
            path=path,
            kind=kind,
            duration_s=max(0.0, end_s - activity.first_event_s),
            size_bytes=size_bytes,
            first_event_s=activity.first_event_s,
            settled_s=now_s,
            format=verdict,
        )
        logger.info(
            "observed %s checkpoint write %s: %d bytes in %.3f s",
            kind.value,
            name,
            size_bytes,
            observed.duration_s,
        )
        return observed


# -- adoption ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Adopted:
    path: Path
    manifest_path: Path
    manifest: Manifest
    verdict: FormatVerdict


def adopt(
    path: Path,
    *,
    run_id: str = "",
    attempt: int = 0,
    hash_algo: HashAlgo = HashAlgo.XXH3_128,
    meta: Mapping[str, Any] | None = None,
    ops: FsOps | None = None,
    clock: Clock | None = None,
    limits: FormatLimits = DEFAULT_LIMITS,
) -> Adopted:
    """Write a manifest beside a stable, format-valid foreign checkpoint (inside a directory,
    `<file>.MANIFEST.json` beside a file). Idempotent; raises CheckpointInvalid when the
    format check fails and NotStable when the checkpoint changed while it was hashed.
    """
    ops = ops or FsOps()
    clock = clock or SystemClock()
    name = path.name
    site = site_of(path)
    verdict = check_foreign(path, full=True, limits=limits)
    if verdict.status is not FormatStatus.VALID:
        raise verdict.problem or CheckpointInvalid(
            name, None, Defect.FORMAT_INVALID, verdict.reason, "only known formats are adopted"
        )
    if os.path.lexists(site.manifest):
        try:
            existing, _ = quick_check(path, name=name)
            if os.lstat(site.manifest).st_mtime_ns >= verdict.newest_mtime_ns:
                return Adopted(path, site.manifest, existing, verdict)
        except CheckpointInvalid:
            pass  # stale or broken: written anew below
    if site.only is None:
        files = seal(path, hash_algo, ops, exclude=frozenset((MANIFEST_NAME,))).files
    else:
        ops.fsync_file(path)
        digest, size = file_digest(path, hash_algo)
        files = (FileEntry(path=name, size_bytes=size, digest=digest),)
    after = check_foreign(path, full=False, limits=limits)
    if (after.size_bytes, after.newest_mtime_ns) != (verdict.size_bytes, verdict.newest_mtime_ns):
        raise NotStable(
            name, None, "changed while being adopted", "adopt it after writes have stopped"
        )
    adopted_meta = {"adopted": {"format": verdict.format.value if verdict.format else None}}
    manifest = Manifest(
        step=verdict.step if verdict.step is not None else 0,
        created_unix=clock.wall(),
        run_id=run_id,
        attempt=attempt,
        hash=hash_algo,
        files=files,
        meta={**adopted_meta, **dict(meta or {})},
    )
    temporary = site.manifest.with_name(f".{site.manifest.name}.tmp-{os.getpid()}")
    write_durable(ops, temporary, render_manifest(manifest), None)
    ops.replace(temporary, site.manifest)
    ops.fsync_dir(site.manifest.parent)
    logger.info("adopted %s checkpoint %s (%d files)", verdict.format, path, len(files))
    return Adopted(path, site.manifest, manifest, verdict)
