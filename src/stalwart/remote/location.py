"""A remote checkpoint root behind fsspec, with the few operations the mirror needs, typed.

Every call goes to the file system the URL names (s3fs, gcsfs, adlfs, local); nothing here
speaks a cloud API itself. Listings are always fresh (fsspec caches directory listings, and
another machine may have written since).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
from fsspec.callbacks import Callback  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from stalwart.errors import UsageError
from stalwart.remote.config import RemoteConfig

logger = logging.getLogger(__name__)

_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


class RemoteUnavailable(UsageError):
    """The remote URL cannot be used here (unknown protocol, missing extra, bad options)."""


class TransferAborted(Exception):
    """A transfer was stopped on request (a newer or urgent checkpoint, or closing)."""


class _AbortCallback(Callback):  # type: ignore[misc]
    """An fsspec callback that stops a transfer at its next progress report when asked,
    and tells `done` about each file whose transfer ended (successfully or not)."""

    def __init__(
        self,
        abort: Callable[[], bool],
        done: Callable[[str], None] | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__()
        self._abort = abort
        self._done = done
        self._target = target

    def call(self, *args: Any, **kwargs: Any) -> None:
        if self._abort():
            raise TransferAborted("transfer stopped on request")

    def branched(self, path_1: str, path_2: str, **kwargs: Any) -> _AbortCallback:
        return _AbortCallback(self._abort, self._done, path_2)

    def close(self) -> None:
        if self._done is not None and self._target is not None:
            self._done(self._target)


def _never() -> bool:
    return False


def describe_error(exc: BaseException) -> str:
    """An exception in one line for logs and results: its type and message."""
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


def storage_options_for(
    url: str, options: Mapping[str, Any], timeout_s: float | None
) -> dict[str, Any]:
    """The options handed to fsspec: the user's, plus a request timeout for s3 and parent
    directories created on demand for local paths (unless the user set them)."""
    protocol = url.split("://", 1)[0].lower()
    merged = dict(options)
    if protocol in ("s3", "s3a") and timeout_s is not None:
        config_kwargs = dict(merged.get("config_kwargs") or {})
        if "connect_timeout" not in config_kwargs and "read_timeout" not in config_kwargs:
            config_kwargs["connect_timeout"] = timeout_s
            config_kwargs["read_timeout"] = timeout_s
        merged["config_kwargs"] = config_kwargs
    if protocol in ("file", "local"):
        merged.setdefault("auto_mkdir", True)
    return merged


class Remote:
    """The root of a remote checkpoint directory: `<root>/step-000001234/<files>`."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self._local = isinstance(fs, LocalFileSystem)

    @classmethod
    def open(
        cls,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Remote:
        """The file system for `url` (no request is made yet); RemoteUnavailable if none."""
        options = storage_options_for(url, storage_options or {}, timeout_s)
        protocol = url.split("://", 1)[0].lower()
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            extra = _EXTRAS.get(protocol)
            hint = f"pip install 'stalwart[{extra}]'" if extra else "install its fsspec driver"
            raise RemoteUnavailable(
                f"remote {url}: no file system for {protocol}:// ({exc}); {hint}"
            ) from None
        except (ValueError, TypeError) as exc:
            raise RemoteUnavailable(
                f"remote {url}: {exc}; check checkpoint.remote.url and storage_options"
            ) from None
        return cls(fs, str(root), url)

    @classmethod
    def from_config(cls, config: RemoteConfig) -> Remote:
        if config.url is None:
            raise RemoteUnavailable("no remote configured (checkpoint.remote.url is not set)")
        return cls.open(config.url, config.storage_options, timeout_s=config.timeout_s)

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    def path(self, *parts: str) -> str:
        """A path under the root, as the file system spells it."""
        return "/".join((self.root, *parts))

    def show(self, *parts: str) -> str:
        """The URL of a path under the root, for people."""
        return "/".join((self.url.rstrip("/"), *parts))

    def objects(self, under: str = "") -> dict[str, int]:
        """Every object below `under` (a path relative to the root) with its size, keyed by
        its path relative to `under`; a fresh listing. Missing: empty."""
        base = self.path(under.strip("/")) if under.strip("/") else self.root
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        prefix = base + "/"
        sizes: dict[str, int] = {}
        for path, info in found.items():
            if info.get("type", "file") != "file" or not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            if rel and not rel.endswith("/"):
                sizes[rel] = int(info.get("size") or 0)
        return sizes

    def read_bytes(self, rel: str, max_bytes: int) -> bytes | None:
        """Up to `max_bytes + 1` bytes of a small object (so "too large" is seen); None if it
        does not exist."""
        try:
            data = self.fs.cat_file(self.path(rel), start=0, end=max_bytes + 1)
        except FileNotFoundError:
            return None
        return bytes(data)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one small object; durable when this returns."""
        target = self.path(rel)
        self.fs.pipe_file(target, data)
        self.sync([rel])

    def put_files(
        self, pairs: Sequence[tuple[Path, str]], *, abort: Callable[[], bool] = _never
    ) -> None:
        """Upload local files to paths relative to the root, concurrently where the file
        system can; `abort` is polled at each progress report."""
        if not pairs:
            return
        if self._local:
            for _, rel in pairs:
                os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
        self.fs.put(
            [str(local) for local, _ in pairs],
            [self.path(rel) for _, rel in pairs],
            callback=_AbortCallback(abort),
        )

    def get_files(
        self,
        pairs: Sequence[tuple[str, Path]],
        *,
        abort: Callable[[], bool] = _never,
        done: Callable[[str], None] | None = None,
    ) -> None:
        """Download objects (paths relative to the root) to local files, concurrently where
        the file system can; `done(local path)` is called as each file's transfer ends."""
        if not pairs:
            return
        for _, local in pairs:
            local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get(
            [self.path(rel) for rel, _ in pairs],
            [str(local) for _, local in pairs],
            callback=_AbortCallback(abort, done),
        )

    def remove(self, rels: Iterable[str]) -> None:
        """Delete objects (paths relative to the root); missing ones are fine."""
        rels = list(rels)
        paths = [self.path(rel) for rel in rels]
        if not paths:
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(paths)
        self.sync_dirs(rels_parents(rels))

    def remove_tree(self, rel: str) -> None:
        """Delete everything under a path relative to the root; missing is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel), recursive=True)
        self.fs.invalidate_cache(self.path(rel))

    def sync(self, rels: Iterable[str]) -> None:
        """Make written objects durable before what depends on them is written.

        Object stores are durable when a write returns; a local or NFS directory needs
        fsync of the files and of the directories that hold them.
        """
        if not self._local:
            return
        rels = list(rels)
        for rel in rels:
            fd = os.open(self.path(rel), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.sync_dirs(rels_parents(rels))

    def sync_dirs(self, rels: Iterable[str]) -> None:
        if not self._local:
            return
        for rel in rels:
            path = self.path(rel) if rel else self.root
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def rels_parents(rels: Iterable[str]) -> list[str]:
    """The directories (relative, "" for the root) holding the given paths, deepest first."""
    parents = {rel.rsplit("/", 1)[0] if "/" in rel else "" for rel in rels}
    return sorted(parents, key=lambda p: (-p.count("/") - bool(p), p))
