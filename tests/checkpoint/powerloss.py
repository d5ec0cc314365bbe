"""A power-loss model of the file system, for the checkpoint tests.

Operations really happen (on tmp_path), and the model records what a power cut would
keep: a file's contents as of its last fsync (nothing if never fsynced), a directory's
entries as of its last fsync. `materialize()` builds the tree as it would be after the
cut, so discovery can be run on it. Everything present when the model starts counts as
durable. `cut_after=k` lets k operations succeed and cuts the power at the next one.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from stalwart.checkpoint.fsops import FsOps


class PowerCut(BaseException):
    """The machine lost power: nothing after this happens (BaseException: no cleanup runs)."""


class PowerLossFs(FsOps):
    def __init__(self, root: Path, *, cut_after: int | None = None) -> None:
        self.root = root
        self.cut_after = cut_after
        self.ops_done = 0
        self.dead = False
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._files: dict[int, bytes] = {}
        self._dirs: dict[int, dict[str, int]] = {}
        self._is_dir: dict[int, bool] = {}
        self._root_ino = os.lstat(root).st_ino
        self._snapshot(root)

    # durable state

    def _snapshot(self, directory: Path) -> None:
        self._record_dir(directory)
        for child in directory.iterdir():
            st = os.lstat(child)
            if stat.S_ISDIR(st.st_mode):
                self._snapshot(child)
            else:
                self._files[st.st_ino] = child.read_bytes()

    def _record_dir(self, directory: Path) -> None:
        entries = {}
        for child in directory.iterdir():
            st = os.lstat(child)
            entries[child.name] = st.st_ino
            self._is_dir[st.st_ino] = stat.S_ISDIR(st.st_mode)
        self._dirs[os.lstat(directory).st_ino] = entries

    def _forget(self, ino: int) -> None:
        """A new inode (possibly a reused number) has no durable past."""
        self._files.pop(ino, None)
        self._dirs.pop(ino, None)

    def _tick(self, what: str) -> None:
        with self._lock:
            if self.dead:
                raise PowerCut(what)
            if self.cut_after is not None and self.ops_done >= self.cut_after:
                self.dead = True
                self.log.append(f"POWER CUT before {what}")
                raise PowerCut(what)
            self.ops_done += 1
            self.log.append(what)

    def materialize(self, dest: Path) -> Path:
        """The tree under `root` as it would be found after a power cut now."""
        dest.mkdir()
        self._build(self._root_ino, dest)
        return dest

    def _build(self, dir_ino: int, dest: Path) -> None:
        for name, ino in self._dirs.get(dir_ino, {}).items():
            if self._is_dir.get(ino, False):
                (dest / name).mkdir()
                self._build(ino, dest / name)
            else:
                (dest / name).write_bytes(self._files.get(ino, b""))

    # operations

    def create(self, path: Path) -> int:
        self._tick(f"create {path.name}")
        fd = super().create(path)
        with self._lock:
            self._forget(os.fstat(fd).st_ino)
        return fd

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        self._tick("write")
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._tick("fsync")
        with open(f"/proc/self/fd/{fd}", "rb") as handle:
            content = handle.read()
        with self._lock:
            self._files[os.fstat(fd).st_ino] = content

    def close(self, fd: int) -> None:
        try:
            self._tick("close")
        finally:
            super().close(fd)  # a dead process's descriptors are closed too

    def fsync_file(self, path: Path) -> None:
        self._tick(f"fsync_file {path.name}")
        content = path.read_bytes()
        with self._lock:
            self._files[os.lstat(path).st_ino] = content

    def fsync_dir(self, path: Path) -> None:
        self._tick(f"fsync_dir {path.name}")
        with self._lock:
            self._record_dir(path)

    def mkdir(self, path: Path) -> None:
        self._tick(f"mkdir {path.name}")
        super().mkdir(path)
        with self._lock:
            self._forget(os.lstat(path).st_ino)

    def replace(self, src: Path, dst: Path) -> None:
        self._tick(f"replace {src.name} {dst.name}")
        super().replace(src, dst)

    def unlink(self, path: Path) -> None:
        self._tick(f"unlink {path.name}")
        super().unlink(path)

    def remove_tree(self, path: Path) -> None:
        self._tick(f"remove_tree {path.name}")
        super().remove_tree(path)
