"""One save in progress: a staging directory, the files written into it, and its commit
(the protocol itself is in store.py)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stalwart.checkpoint.hashed import HashedFile, Written
from stalwart.checkpoint.layout import MANIFEST_NAME, checkpoint_name
from stalwart.checkpoint.manifest import FileEntry, path_problem

if TYPE_CHECKING:
    from stalwart.checkpoint.store import CheckpointStore, Committed


class TxState(enum.Enum):
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Transaction:
    """One save in progress, in its own staging directory; see CheckpointStore.begin."""

    def __init__(
        self, store: CheckpointStore, step: int, staging: Path, meta: dict[str, Any]
    ) -> None:
        self.store = store
        self.step = step
        self.name = checkpoint_name(step)
        self.dir = staging
        """The staging directory: write anything under it, or use `path()`."""
        self.meta = meta
        self.state = TxState.OPEN
        self.committed: Committed | None = None
        self.written: dict[str, Written] = {}
        """Files hashed as they were written: the commit takes these digests, unread."""

    def path(self, relpath: str) -> Path:
        """Where to write `relpath` (e.g. "model.pt", "shards/0.bin"); parent dirs are created."""
        self._require_open()
        problem = path_problem(relpath)
        if problem is not None or relpath == MANIFEST_NAME:
            why = problem or "MANIFEST.json is written by the store"
            raise ValueError(f"checkpoint {self.name}: cannot write {relpath!r}: {why}")
        target = self.dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, relpath: str, data: bytes | bytearray | memoryview) -> Path:
        """Write one file of the checkpoint (made durable at commit, hashed as written)."""
        return self.write_file(relpath, (data,))

    def write_file(self, relpath: str, chunks: Iterable[bytes | bytearray | memoryview]) -> Path:
        """Write one file from `chunks`, in order, hashing them as they are written; an
        OSError aborts the transaction and raises CommitFailed (DiskFull when out of space)."""
        try:
            with self.open_hashed(relpath) as out:
                for chunk in chunks:
                    out.write(chunk)
        except OSError as exc:
            self.abort()
            raise self.store.commit_error(self.name, relpath, exc) from exc
        return out.path

    def open_hashed(self, relpath: str) -> HashedFile:
        """A new file `relpath` to write into (a context manager); its digest is computed
        from the bytes written, and the commit uses it instead of reading the file back."""
        return HashedFile(
            self.store.ops,
            self.path(relpath),
            relpath,
            self.store.hash_algo,
            lambda written: self.written.__setitem__(relpath, written),
        )

    def commit(self) -> Committed:
        """Make the checkpoint durable under its final name; on failure, remove staging."""
        return self._finish(
            lambda: self.store.finish(
                self.dir, self.step, self.meta, staging_owned=True, known=self.written
            )
        )

    def commit_sealed(self, files: Iterable[FileEntry]) -> Committed:
        """Commit files that their writers already made durable and hashed (the ranks of a
        sharded save, each sealing its own shards); see CheckpointStore.finish_sealed."""
        return self._finish(lambda: self.store.finish_sealed(self.dir, self.step, self.meta, files))

    def commit_copy(self, raw_manifest: bytes) -> Committed:
        """Commit files copied into `dir` from elsewhere (a download) and verified against
        `raw_manifest`, which is kept byte for byte; see CheckpointStore.finish_copy."""
        return self._finish(lambda: self.store.finish_copy(self.dir, self.step, raw_manifest))

    def _finish(self, finish: Callable[[], Committed]) -> Committed:
        """Run one of the store's commits; the transaction is committed or aborted after."""
        self._require_open()
        try:
            committed = finish()
        except BaseException:
            self.state = TxState.ABORTED
            raise
        self.state = TxState.COMMITTED
        self.committed = committed
        return committed

    def abort(self) -> None:
        """Remove the staging directory; idempotent."""
        if self.state is not TxState.OPEN:
            return
        self.state = TxState.ABORTED
        self.store.remove_staging(self.dir)

    def _require_open(self) -> None:
        if self.state is not TxState.OPEN:
            raise RuntimeError(f"checkpoint {self.name}: transaction is {self.state.value}")

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self.state is TxState.OPEN:
                self.commit()
        else:
            self.abort()
