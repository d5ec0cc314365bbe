"""Restore from the remote copy: on a fresh machine, or by hand (`checkpoints pull`).

Newest first, only remote checkpoints whose manifest parses and matches the objects present
are considered. Each is downloaded into a local staging directory, its digests are checked
against the manifest, and it is committed with the local store's atomic protocol (keeping
the manifest byte for byte). A checkpoint that fails verification is skipped for the next
older one. An unreachable remote never raises into the caller: the result says so, and the
job goes on with its local checkpoints.
"""

from __future__ import annotations

import enum
import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from stalwart.checkpoint.errors import CheckpointInvalid, CheckpointStoreError, Defect, DiskFull
from stalwart.checkpoint.fsops import FsOps, is_out_of_space
from stalwart.checkpoint.manifest import FileEntry, Manifest
from stalwart.checkpoint.pruning import disk_free_bytes
from stalwart.checkpoint.store import CheckpointStore, Committed
from stalwart.checkpoint.verify import DEFAULT_CHUNK_BYTES, check_file
from stalwart.clock import Clock, SystemClock
from stalwart.remote.config import RemoteConfig, retry_delay_s
from stalwart.remote.listing import RemoteCheckpoint, RemoteEntry, RemoteState, check, scan_remote
from stalwart.remote.location import Remote, RemoteUnavailable, describe_error
from stalwart.remote.views import pull_target

logger = logging.getLogger(__name__)

T = TypeVar("T")

FLUSH_EVERY_S = 0.1
"""While a download runs, the files it writes are fsynced this often (write-back early)."""


class RestoreOutcome(enum.Enum):
    RESTORED = "restored"
    """A remote checkpoint was downloaded, verified and committed locally."""
    UP_TO_DATE = "up to date"
    """No complete remote checkpoint is newer than the local one (or it is already local)."""
    NOTHING = "nothing to restore"
    """No remote checkpoint that is complete and verifies."""
    UNREACHABLE = "unreachable"
    """The remote could not be listed or read (after retries): go on with local ones."""
    FAILED = "failed"
    """A local problem (disk full, the remote URL unusable here); the message says what."""


@dataclass(frozen=True)
class RemoteSkip:
    """A remote checkpoint passed over, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class RestoreResult:
    outcome: RestoreOutcome
    remote_url: str
    committed: Committed | None
    """The local checkpoint now committed (RESTORED only)."""
    skipped: tuple[RemoteSkip, ...]
    """Newer remote checkpoints not restored, newest first, with reasons."""
    newest_remote: str | None
    """The newest remote checkpoint whose manifest was seen (complete ones once read)."""
    error: str | None
    downloaded_bytes: int
    elapsed_s: float

    @property
    def path(self) -> Path | None:
        return self.committed.path if self.committed is not None else None

    @property
    def message(self) -> str:
        """One line for logs and the CLI."""
        skipped = ""
        if self.skipped:
            skipped = "; skipped " + ", ".join(f"{s.name} ({s.reason})" for s in self.skipped)
        if self.outcome is RestoreOutcome.RESTORED and self.committed is not None:
            return (
                f"restored {self.committed.name} from {self.remote_url} "
                f"({self.downloaded_bytes} bytes, {self.elapsed_s:.1f} s){skipped}"
            )
        why = f": {self.error}" if self.error else ""
        return f"remote {self.remote_url}: {self.outcome.value}{why}{skipped}"


class _Unreachable(Exception):
    pass


def _attempts(
    action: Callable[[], T],
    what: str,
    config: RemoteConfig,
    stop: threading.Event,
) -> T:
    """Run a remote operation, retrying transport trouble `config.start_attempts` times."""
    failures = 0
    while True:
        try:
            return action()
        except (FileNotFoundError, CheckpointInvalid, CheckpointStoreError):
            raise
        except OSError as exc:
            if is_out_of_space(exc):
                raise
            error = exc
        except Exception as exc:
            error = exc  # type: ignore[assignment]
        failures += 1
        if failures >= config.start_attempts:
            raise _Unreachable(f"{what}: {describe_error(error)}") from error
        delay_s = retry_delay_s(failures, config.start_retry_s, config.retry_max_s)
        logger.warning(
            "%s failed (attempt %d of %d): %s; retrying in %.1f s",
            what,
            failures,
            config.start_attempts,
            describe_error(error),
            delay_s,
        )
        stop.wait(delay_s)


class _Restorer:
    def __init__(
        self,
        remote: Remote,
        local_root: Path,
        config: RemoteConfig,
        store: CheckpointStore,
        clock: Clock,
    ) -> None:
        self.remote = remote
        self.local_root = local_root
        self.config = config
        self.store = store
        self.clock = clock
        self.started_s = clock.monotonic()
        self.skipped: list[RemoteSkip] = []
        self.newest_remote: str | None = None
        self.downloaded_bytes = 0
        self._pause = threading.Event()  # never set: a sleep that needs no clock of its own
        self.fallback = "; going on with local checkpoints"

    def result(
        self,
        outcome: RestoreOutcome,
        *,
        committed: Committed | None = None,
        error: str | None = None,
    ) -> RestoreResult:
        result = RestoreResult(
            outcome=outcome,
            remote_url=self.remote.url,
            committed=committed,
            skipped=tuple(self.skipped),
            newest_remote=self.newest_remote,
            error=error,
            downloaded_bytes=self.downloaded_bytes,
            elapsed_s=self.clock.monotonic() - self.started_s,
        )
        if outcome in (RestoreOutcome.UNREACHABLE, RestoreOutcome.FAILED):
            logger.warning("%s%s", result.message, self.fallback)
        else:
            logger.info("%s", result.message)
        return result

    def skip(self, name: str, reason: str) -> None:
        logger.warning("not restoring remote %s: %s", name, reason)
        self.skipped.append(RemoteSkip(name, reason))

    def run(self, entries: list[RemoteEntry], *, newer_than_step: int | None) -> RestoreResult:
        considered = [e for e in entries if newer_than_step is None or e.step > newer_than_step]
        if not considered:
            self.newest_remote = next((e.name for e in entries if e.has_manifest), None)
            outcome = RestoreOutcome.UP_TO_DATE if self.newest_remote else RestoreOutcome.NOTHING
            return self.result(outcome)
        try:
            for entry in considered:
                if not entry.has_manifest:
                    self.skip(entry.name, "no manifest (upload in progress or interrupted)")
                    continue
                checkpoint = _attempts(
                    functools.partial(check, self.remote, entry),
                    f"reading {self.remote.show(entry.name)}",
                    self.config,
                    self._pause,
                )
                if checkpoint.state is not RemoteState.COMPLETE:
                    self.skip(entry.name, checkpoint.reason)
                    continue
                if self.newest_remote is None:
                    self.newest_remote = entry.name
                committed = self.fetch(checkpoint)
                if committed is not None:
                    return self.result(RestoreOutcome.RESTORED, committed=committed)
        except _Unreachable as exc:
            return self.result(RestoreOutcome.UNREACHABLE, error=str(exc))
        except (OSError, DiskFull) as exc:
            return self.result(RestoreOutcome.FAILED, error=describe_error(exc))
        return self.result(RestoreOutcome.NOTHING, error="no remote checkpoint verified")

    def fetch(self, checkpoint: RemoteCheckpoint) -> Committed | None:
        """Download, verify and commit one complete remote checkpoint; None: skipped."""
        manifest, raw = checkpoint.manifest, checkpoint.raw_manifest
        assert manifest is not None and raw is not None
        name = checkpoint.name
        if (self.local_root / name).exists():
            self.skip(name, "a local checkpoint of that name exists (it was not intact)")
            return None
        self.local_root.mkdir(parents=True, exist_ok=True)
        free_bytes = disk_free_bytes(self.local_root)
        if free_bytes < manifest.total_bytes:
            raise OSError(
                f"not enough space under {self.local_root} for {name}: "
                f"{manifest.total_bytes} bytes needed, {free_bytes} free"
            )
        try:
            tx = self.store.begin(checkpoint.step)
        except CheckpointStoreError as exc:
            self.skip(name, exc.detail)
            return None
        try:
            _attempts(
                lambda: self.download(name, manifest, tx.dir),
                f"downloading {checkpoint.url}",
                self.config,
                self._pause,
            )
            self.downloaded_bytes += manifest.total_bytes
            return tx.commit_copy(raw)
        except FileNotFoundError as exc:
            self.skip(name, f"vanished during the download ({exc})")
        except CheckpointInvalid as exc:
            self.skip(name, f"failed verification after download: {exc.reason}")
        except DiskFull:
            raise  # an older one would not fit either
        except CheckpointStoreError as exc:
            self.skip(name, f"could not commit it locally: {exc.detail}")
        finally:
            tx.abort()
        return None

    def download(self, name: str, manifest: Manifest, staging: Path) -> None:
        """Download every listed file into `staging` and check its digest (CheckpointInvalid).

        Each file is checked and fsynced as soon as its transfer ends, while the others are
        still downloading, so neither costs much on top of the download; the commit's own
        fsyncs then find little left to write.
        """
        pairs = [(f"{name}/{entry.path}", staging / entry.path) for entry in manifest.files]
        checker = DownloadChecker(staging, manifest, name, self.store.ops)
        checker.start()
        try:
            self.remote.get_files(pairs, done=checker.file_done)
            checker.finish()
        finally:
            checker.close()


class DownloadChecker:
    """Checks downloaded files (digest, then fsync) in a thread of its own as they land."""

    def __init__(self, base: Path, manifest: Manifest, name: str, ops: FsOps) -> None:
        self.base = base
        self.manifest = manifest
        self.name = name
        self.ops = ops
        self._by_path = {str(base / entry.path): entry for entry in manifest.files}
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._checked: set[str] = set()
        self._problems: dict[str, CheckpointInvalid] = {}
        self._buffer = bytearray(DEFAULT_CHUNK_BYTES)
        self._thread = threading.Thread(target=self._run, name="stalwart-check", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def file_done(self, local_path: str) -> None:
        """From the transfer (any thread): this file's transfer ended."""
        self._queue.put(local_path)

    def _check(self, entry: FileEntry) -> None:
        try:
            check_file(self.base, entry, self.manifest.hash, name=self.name, buffer=self._buffer)
            self.ops.fsync_file(self.base / entry.path)
        except CheckpointInvalid as problem:
            self._problems[entry.path] = problem
        except OSError as exc:
            self._problems[entry.path] = CheckpointInvalid(
                self.name, entry.path, Defect.UNREADABLE, str(exc)
            )
        self._checked.add(entry.path)

    def _run(self) -> None:
        while True:
            try:
                path = self._queue.get(timeout=FLUSH_EVERY_S)
            except queue.Empty:
                self._flush()
                continue
            if path is None:
                return
            entry = self._by_path.get(path)
            if entry is not None and entry.path not in self._checked:
                self._check(entry)

    def _flush(self) -> None:
        """Write back what the files still downloading hold so far, so that the fsync after
        the last one lands has little left to do (the network and the disk work at once)."""
        for entry in self.manifest.files:
            if entry.path in self._checked:
                continue
            try:
                self.ops.fsync_file(self.base / entry.path)
            except OSError:
                continue  # not created yet, or gone: nothing to write back

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def finish(self) -> None:
        """After the transfer: check what was not checked yet, raise the first problem."""
        self.close()
        for entry in self.manifest.files:
            if entry.path not in self._checked:
                self._check(entry)
        for entry in self.manifest.files:
            if entry.path in self._problems:
                raise self._problems[entry.path]


def _open(remote: Remote | RemoteConfig) -> Remote:
    return remote if isinstance(remote, Remote) else Remote.from_config(remote)


def _failed(remote: Remote | RemoteConfig, error: str) -> RestoreResult:
    url = remote.url if isinstance(remote, Remote) else str(remote.url)
    return RestoreResult(RestoreOutcome.FAILED, url, None, (), None, error, 0, 0.0)


def _failed_to_open(remote: Remote | RemoteConfig, exc: RemoteUnavailable) -> RestoreResult:
    logger.warning("%s; going on with local checkpoints", exc)
    return _failed(remote, str(exc))


def _listed(
    remote: Remote | RemoteConfig,
    local_root: Path,
    config: RemoteConfig | None,
    store: CheckpointStore | None,
    clock: Clock | None,
    *,
    by_hand: bool = False,
) -> tuple[_Restorer, list[RemoteEntry]] | RestoreResult:
    """Open the remote and list it (with retries): the restorer and the entries, newest
    first, or the result that says why not. `by_hand` (a pull): no "going on with local
    checkpoints" in the logs, nothing goes on."""
    if config is None:
        config = remote if isinstance(remote, RemoteConfig) else RemoteConfig()
    try:
        opened = _open(remote)
    except RemoteUnavailable as exc:
        return _failed_to_open(remote, exc)
    clock = clock or SystemClock()
    store = store or CheckpointStore(Path(local_root), clock=clock)
    restorer = _Restorer(opened, Path(local_root), config, store, clock)
    if by_hand:
        restorer.fallback = ""
    try:
        entries = _attempts(
            lambda: scan_remote(opened), f"listing {opened.url}", config, restorer._pause
        )
    except _Unreachable as exc:
        return restorer.result(RestoreOutcome.UNREACHABLE, error=str(exc))
    return restorer, entries


def restore_newest(
    remote: Remote | RemoteConfig,
    local_root: Path,
    *,
    newer_than_step: int | None = None,
    config: RemoteConfig | None = None,
    store: CheckpointStore | None = None,
    clock: Clock | None = None,
) -> RestoreResult:
    """Restore the newest remote checkpoint that verifies, if it is newer than
    `newer_than_step` (the newest intact local one; None: any). Never raises for remote
    trouble: the result says what happened (UNREACHABLE: go on with local checkpoints)."""
    listed = _listed(remote, local_root, config, store, clock)
    if isinstance(listed, RestoreResult):
        return listed
    restorer, entries = listed
    return restorer.run(entries, newer_than_step=newer_than_step)


def pull(
    remote: Remote | RemoteConfig,
    local_root: Path,
    name: str | None = None,
    *,
    config: RemoteConfig | None = None,
    store: CheckpointStore | None = None,
    clock: Clock | None = None,
) -> RestoreResult:
    """Fetch one remote checkpoint by name (`step-000001234`, a step number), or the newest
    that verifies (None or "latest"), into `local_root`: download, verify, commit."""
    try:
        wanted = pull_target(name)
    except ValueError as exc:
        return _failed(remote, str(exc))
    if wanted is None:
        return restore_newest(remote, local_root, config=config, store=store, clock=clock)
    listed = _listed(remote, local_root, config, store, clock, by_hand=True)
    if isinstance(listed, RestoreResult):
        return listed
    restorer, entries = listed
    chosen = [e for e in entries if e.name == wanted]
    if not chosen:
        return restorer.result(
            RestoreOutcome.NOTHING, error=f"no {wanted} at {restorer.remote.url}"
        )
    if (Path(local_root) / wanted).exists():
        return restorer.result(RestoreOutcome.UP_TO_DATE, error=f"{wanted} is already local")
    return restorer.run(chosen, newer_than_step=None)
