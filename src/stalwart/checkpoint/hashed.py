"""Writing a checkpoint's file while hashing it, so the commit need not read it back.

    with tx.open_hashed("model.bin") as out:
        out.write(header)
        out.write(payload)
    # or: tx.write_file("model.bin", (header, payload))

Each range is hashed after `FsOps.write` returned for it, and `FsOps.write` returns only
once every byte of its range was written (it resolves short writes itself, or raises): the
digest is of the bytes the write calls wrote, not of what the caller meant to write. A large
range is written by a helper thread chunk by chunk while this thread hashes the chunks
already written (`os.write` releases the GIL, xxhash does not), so the digest costs the
write almost nothing.

What the commit trusts is a `Written`: the entry plus the file's inode, size and change
times as the writer left them. A file changed afterwards (written again through
`Transaction.path`, replaced, appended to) no longer matches and is sealed by reading it
back, as every file not written this way is. The check is as fine as the file system's
timestamps: a same-size rewrite within one timestamp tick goes unnoticed by the commit
(full verification still catches it, as it catches any later change).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.manifest import FileEntry, HashAlgo, Hasher

PIPELINE_CHUNK_BYTES = 4 * 1024 * 1024
"""One write call's size when a range is written and hashed in a pipeline."""


@dataclass(frozen=True)
class Written:
    """A file the hashing writer wrote and closed: what the manifest lists for it, and the
    identity it had then (anything that touched it since changes one of these)."""

    entry: FileEntry
    algo: HashAlgo
    ino: int
    mtime_ns: int
    ctime_ns: int

    def unchanged(self, st: os.stat_result, algo: HashAlgo) -> bool:
        return (
            algo is self.algo
            and st.st_ino == self.ino
            and st.st_size == self.entry.size_bytes
            and st.st_mtime_ns == self.mtime_ns
            and st.st_ctime_ns == self.ctime_ns
        )


class HashedFile:
    """A new file of a transaction, hashed as it is written (see Transaction.open_hashed).

    `close()` records it with the transaction; a file left by an exception is closed and
    not recorded (the commit would read it back, but the transaction is aborted anyway).
    """

    def __init__(
        self,
        ops: FsOps,
        path: Path,
        relpath: str,
        algo: HashAlgo,
        record: Callable[[Written], None],
        *,
        chunk_bytes: int = PIPELINE_CHUNK_BYTES,
    ) -> None:
        self.path = path
        self.relpath = relpath
        self._ops = ops
        self._algo = algo
        self._hasher: Hasher = algo.new()
        self._record = record
        self._chunk_bytes = chunk_bytes
        self._fd: int | None = ops.create(path)
        self.size_bytes = 0
        self.written: Written | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of `data` (or raise OSError) and hash it; returns its length."""
        fd = self._require_open()
        view = memoryview(data).cast("B")
        total = view.nbytes
        if total <= self._chunk_bytes:
            if total:
                self._ops.write(fd, view)
                self._hasher.update(view)
        else:
            self._pipelined(fd, view)
        self.size_bytes += total
        return total

    def _pipelined(self, fd: int, view: memoryview) -> None:
        """Write `view` chunk by chunk in a helper thread; hash each chunk once written."""
        total = view.nbytes
        step = self._chunk_bytes
        progress: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        stop = threading.Event()

        def write_all() -> None:
            try:
                for start in range(0, total, step):
                    if stop.is_set():
                        return
                    end = min(start + step, total)
                    self._ops.write(fd, view[start:end])
                    progress.put(end)
            except BaseException as exc:  # re-raised in the caller's thread
                progress.put(exc)

        writer = threading.Thread(target=write_all, name="stalwart-ckpt-write", daemon=True)
        writer.start()
        hashed = 0
        try:
            while hashed < total:
                done = progress.get()
                if isinstance(done, BaseException):
                    raise done
                self._hasher.update(view[hashed:done])
                hashed = done
        finally:
            stop.set()
            writer.join()

    def close(self) -> Written:
        """Close the file and record its digest with the transaction."""
        if self.written is not None:
            return self.written
        fd = self._require_open()
        try:
            st = os.fstat(fd)
        finally:
            self._fd = None
            self._ops.close(fd)
        if st.st_size != self.size_bytes:
            raise OSError(
                f"{self.relpath}: {st.st_size} bytes on disk after writing {self.size_bytes}"
            )
        entry = FileEntry(self.relpath, self.size_bytes, self._hasher.hexdigest())
        self.written = Written(entry, self._algo, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        self._record(self.written)
        return self.written

    def discard(self) -> None:
        """Close the file without recording it; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._ops.close(fd)

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.relpath}: the hashed file is closed")
        return self._fd

    def __enter__(self) -> HashedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
