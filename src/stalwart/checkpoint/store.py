"""The atomic commit (DESIGN.md "Checkpoint on disk").

    with store.begin(step) as tx:
        torch.save(state, tx.path("model.pt"))
        tx.write_bytes("extra.json", data)
    # committed here on a clean exit; on an exception the staging directory is removed

Commit order: write files in staging -> fsync each -> write MANIFEST.json -> fsync it ->
fsync the staging directory (and any inside it) -> os.replace to the final name -> fsync
the parent. Files written with `write_bytes`, `write_file` or `open_hashed` are hashed as
they are written (hashed.py) and not read back; others are hashed while they are being
fsynced (fsync releases the GIL), so hashing costs almost nothing on top of the writes.
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart.checkpoint.errors import CommitFailed, DiskFull, StepExists
from stalwart.checkpoint.fsops import FsOps, is_out_of_space
from stalwart.checkpoint.hashed import Written
from stalwart.checkpoint.layout import MANIFEST_NAME, checkpoint_name, staging_name
from stalwart.checkpoint.manifest import (
    FileEntry,
    HashAlgo,
    Manifest,
    parse_manifest,
    render_manifest,
)
from stalwart.checkpoint.seal import (
    SealFailure,
    collect_tree,
    parent_dirs,
    seal,
    write_durable,
)
from stalwart.checkpoint.transaction import Transaction
from stalwart.checkpoint.verify import DEFAULT_CHUNK_BYTES
from stalwart.clock import Clock, SystemClock

__all__ = ["CheckpointStore", "CommitStage", "Committed", "StageHook", "Transaction"]

logger = logging.getLogger(__name__)


class CommitStage(enum.Enum):
    """Points inside a commit, in order; a hook sees each one just before it is passed."""

    FILES_WRITTEN = "files_written"
    """Files are written, none fsynced yet."""
    FILES_SYNCED = "files_synced"
    """Files are durable; MANIFEST.json is not written yet."""
    MANIFEST_WRITTEN = "manifest_written"
    """MANIFEST.json is written, not fsynced yet."""
    STAGING_SYNCED = "staging_synced"
    """The staging directory is durable; not renamed yet."""
    RENAMED = "renamed"
    """Renamed to its final name; the parent directory is not fsynced yet."""
    DURABLE = "durable"
    """Committed and durable."""


StageHook = Callable[[CommitStage], None]


@dataclass(frozen=True)
class Committed:
    """A checkpoint that was committed durably."""

    name: str
    path: Path
    step: int
    manifest: Manifest
    persist_s: float
    """From the start of the commit (files written) until durable."""


def _check_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint meta must be JSON-serializable: {exc}") from None
    return meta


class CheckpointStore:
    """Writes checkpoints into `root` with the atomic commit protocol."""

    def __init__(
        self,
        root: Path,
        *,
        run_id: str = "",
        attempt: int = 0,
        hash_algo: HashAlgo = HashAlgo.XXH3_128,
        ops: FsOps | None = None,
        clock: Clock | None = None,
        on_stage: StageHook | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.attempt = attempt
        self.hash_algo = hash_algo
        self.ops = ops or FsOps()
        self.clock: Clock = clock or SystemClock()
        self.on_stage = on_stage
        self.chunk_bytes = chunk_bytes
        self.annotate: Callable[[], Mapping[str, Any]] | None = None
        """More meta for every save, under the caller's (a Checkpointer: the latest loss)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> CheckpointStore:
        """The store a supervised trainer should use ($STALWART_CKPT_DIR, _RUN_ID, _ATTEMPT)."""
        env = os.environ if environ is None else environ
        root = env.get("STALWART_CKPT_DIR", "")
        if not root:
            raise ValueError(
                "STALWART_CKPT_DIR is not set; run under `stalwart run` or pass a root"
            )
        return cls(
            Path(root),
            run_id=env.get("STALWART_RUN_ID", ""),
            attempt=int(env.get("STALWART_ATTEMPT", "0") or 0),
            **kwargs,
        )

    def begin(self, step: int, *, meta: Mapping[str, Any] | None = None) -> Transaction:
        """Start a save of `step` in a fresh staging directory beside its final place."""
        if step < 0:
            raise ValueError(f"a checkpoint step is >= 0, got {step}")
        extra = self.annotate() if self.annotate is not None else {}
        checked_meta = _check_meta({**extra, **dict(meta or {})})
        name = checkpoint_name(step)
        if os.path.lexists(self.root / name):
            raise StepExists(
                name, None, "already committed", "save a later step; committed ones are final"
            )
        self._ensure_root()
        staging = self.root / staging_name(step, os.getpid())
        if os.path.lexists(staging):
            self.remove_staging(staging)  # an earlier save of ours that failed to clean up
        try:
            self.ops.mkdir(staging)
        except OSError as exc:
            raise self.commit_error(name, None, exc) from exc
        return Transaction(self, step, staging, checked_meta)

    def save_bytes(
        self, step: int, files: Mapping[str, bytes], *, meta: Mapping[str, Any] | None = None
    ) -> Committed:
        """Commit a checkpoint made of the given files in one call."""
        with self.begin(step, meta=meta) as tx:
            for relpath, data in files.items():
                tx.write_bytes(relpath, data)
        assert tx.committed is not None
        return tx.committed

    def commit_directory(
        self, src: Path, step: int, *, meta: Mapping[str, Any] | None = None
    ) -> Committed:
        """Commit a directory written elsewhere (e.g. by torch.distributed.checkpoint).

        `src` must be on the checkpoint directory's file system; it is renamed, not copied.
        On failure it is left where it was (without the manifest this call wrote into it).
        """
        name = checkpoint_name(step)
        checked_meta = _check_meta(meta)
        src = Path(src)
        st = os.lstat(src)
        if not stat.S_ISDIR(st.st_mode):
            raise CommitFailed(name, str(src), "not a directory", "pass the directory to commit")
        self._ensure_root()
        if os.stat(self.root).st_dev != st.st_dev:
            raise CommitFailed(
                name,
                str(src),
                "on another file system than the checkpoint directory",
                f"write it under {self.root} (e.g. into store.begin(step).dir)",
            )
        if os.path.lexists(src / MANIFEST_NAME):
            raise CommitFailed(
                name, MANIFEST_NAME, "already present", "remove it; the store writes it"
            )
        return self.finish(src, step, checked_meta, staging_owned=False)

    def finish(
        self,
        base: Path,
        step: int,
        meta: dict[str, Any],
        *,
        staging_owned: bool,
        known: Mapping[str, Written] | None = None,
    ) -> Committed:
        """Seal `base`, write its manifest, rename it to `step`'s name and make it durable;
        files in `known` (hashed as written, unchanged since) are not read back."""

        def describe() -> tuple[Manifest, bytes, tuple[str, ...]]:
            sealed = seal(
                base,
                self.hash_algo,
                self.ops,
                exclude=frozenset((MANIFEST_NAME,)),
                chunk_bytes=self.chunk_bytes,
                known=known,
            )
            manifest = Manifest(
                step=step,
                created_unix=self.clock.wall(),
                run_id=self.run_id,
                attempt=self.attempt,
                hash=self.hash_algo,
                files=sealed.files,
                meta=meta,
            )
            return manifest, render_manifest(manifest), sealed.dirs

        return self._commit(base, step, describe, staging_owned=staging_owned)

    def finish_sealed(
        self, base: Path, step: int, meta: dict[str, Any], files: Iterable[FileEntry]
    ) -> Committed:
        """Commit the staging directory `base` whose files were fsynced and hashed by their
        writers (`files`). The listing must match the directory exactly: a file nobody
        sealed, or a sealed one missing or of another size, fails the commit. `base` is
        removed on failure.
        """
        entries = tuple(sorted(files, key=lambda entry: entry.path))

        def describe() -> tuple[Manifest, bytes, tuple[str, ...]]:
            on_disk, dirs = collect_tree(base)
            listed = {entry.path for entry in entries}
            present = set(on_disk) - {MANIFEST_NAME}
            if len(listed) != len(entries):
                raise ValueError("a file was sealed twice")
            if present != listed:
                unsealed = sorted(present - listed)
                missing = sorted(listed - present)
                raise ValueError(f"files not sealed: {unsealed}; sealed but missing: {missing}")
            for entry in entries:
                size = os.lstat(base / entry.path).st_size
                if size != entry.size_bytes:
                    raise ValueError(f"{entry.path}: {size} bytes, sealed as {entry.size_bytes}")
            manifest = Manifest(
                step=step,
                created_unix=self.clock.wall(),
                run_id=self.run_id,
                attempt=self.attempt,
                hash=self.hash_algo,
                files=entries,
                meta=meta,
            )
            return manifest, render_manifest(manifest), tuple(dirs)

        return self._commit(base, step, describe, staging_owned=True)

    def finish_copy(self, base: Path, step: int, raw_manifest: bytes) -> Committed:
        """Commit `base`, a staging directory of this store holding the files of a checkpoint
        copied from elsewhere (a remote download) and already verified against `raw_manifest`.

        The manifest is kept byte for byte (the checkpoint keeps its run, attempt and creation
        time); the files are fsynced, not hashed again. `base` is removed on failure.
        """

        def describe() -> tuple[Manifest, bytes, tuple[str, ...]]:
            manifest = parse_manifest(raw_manifest, reserved=(MANIFEST_NAME,))
            if manifest.step != step:
                raise ValueError(f"the manifest is of step {manifest.step}, not {step}")
            for entry in manifest.files:
                try:
                    self.ops.fsync_file(base / entry.path)
                except OSError as exc:
                    raise SealFailure(entry.path, exc) from None
            return manifest, raw_manifest, parent_dirs(entry.path for entry in manifest.files)

        return self._commit(base, step, describe, staging_owned=True)

    def _commit(
        self,
        base: Path,
        step: int,
        describe: Callable[[], tuple[Manifest, bytes, tuple[str, ...]]],
        *,
        staging_owned: bool,
    ) -> Committed:
        """The commit protocol around `describe`, which makes the files durable and returns
        the manifest, its bytes and the subdirectories to fsync (deepest first)."""
        name = checkpoint_name(step)
        final = self.root / name
        started_s = self.clock.monotonic()
        renamed = False
        file: str | None = None
        try:
            self._stage(CommitStage.FILES_WRITTEN)
            try:
                manifest, raw_manifest, dirs = describe()
            except SealFailure as failure:
                file = failure.file
                raise failure.error from None
            except ValueError as exc:
                raise CommitFailed(name, None, str(exc), "remove it and save again") from None
            self._stage(CommitStage.FILES_SYNCED)
            file = MANIFEST_NAME
            write_durable(
                self.ops,
                base / MANIFEST_NAME,
                raw_manifest,
                lambda: self._stage(CommitStage.MANIFEST_WRITTEN),
            )
            file = None
            for rel in dirs:
                self.ops.fsync_dir(base / rel)
            self.ops.fsync_dir(base)
            self._stage(CommitStage.STAGING_SYNCED)
            if os.path.lexists(final):
                raise StepExists(name, None, "already committed", "save a later step")
            try:
                self.ops.replace(base, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise StepExists(
                        name, None, "committed concurrently", "save a later step"
                    ) from None
                raise
            renamed = True
            self._stage(CommitStage.RENAMED)
            self.ops.fsync_dir(self.root)
            if base.parent != self.root:
                self.ops.fsync_dir(base.parent)  # the old name's removal, for tidiness
            self._stage(CommitStage.DURABLE)
        except OSError as exc:
            self._cleanup(base, staging_owned=staging_owned, renamed=renamed)
            raise self.commit_error(name, file, exc) from exc
        except BaseException:
            self._cleanup(base, staging_owned=staging_owned, renamed=renamed)
            raise
        persist_s = self.clock.monotonic() - started_s
        logger.info(
            "committed checkpoint %s (%d bytes, %.3f s)", name, manifest.total_bytes, persist_s
        )
        return Committed(
            name=name,
            path=final,
            step=step,
            manifest=manifest,
            persist_s=persist_s,
        )

    def commit_error(self, name: str, file: str | None, exc: OSError) -> CommitFailed:
        detail = exc.strerror or str(exc)
        if is_out_of_space(exc):
            return DiskFull(
                name,
                file,
                f"out of space: {detail}",
                f"free space under {self.root} or keep fewer checkpoints; "
                "the save was discarded and the previous checkpoint is intact",
            )
        return CommitFailed(
            name, file, detail, "the save was discarded and the previous checkpoint is intact"
        )

    def remove_staging(self, staging: Path) -> None:
        try:
            self.ops.remove_tree(staging)
        except OSError as exc:
            logger.warning(
                "could not remove staging directory %s: %s; it is removed at the next start",
                staging,
                exc,
            )

    def _cleanup(self, base: Path, *, staging_owned: bool, renamed: bool) -> None:
        if renamed:
            return  # it is at its final name; verification decides what it is worth
        if staging_owned:
            self.remove_staging(base)
        else:
            try:
                (base / MANIFEST_NAME).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove %s: %s", base / MANIFEST_NAME, exc)

    def _ensure_root(self) -> None:
        if self.root.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.ops.fsync_dir(self.root.parent)

    def _stage(self, stage: CommitStage) -> None:
        if self.on_stage is not None:
            self.on_stage(stage)
