"""Upload of one committed checkpoint: data files first, sizes checked, MANIFEST.json last.

The remote manifest's presence is the remote commit, so a reader never sees a remote
checkpoint without all its files. The local copy's digests are checked while it uploads
(the bytes sent are the bytes the manifest describes); a mismatch stops the upload before
the manifest is written.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stalwart.checkpoint.layout import MANIFEST_NAME, parse_step
from stalwart.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    HashAlgo,
    Manifest,
    ManifestError,
    parse_manifest,
)
from stalwart.checkpoint.verify import DEFAULT_CHUNK_BYTES
from stalwart.remote.listing import size_problem
from stalwart.remote.location import Remote, TransferAborted

logger = logging.getLogger(__name__)


class LocalCheckpointError(Exception):
    """The local checkpoint cannot be uploaded (gone, not a managed checkpoint, or it fails
    verification); retrying does not help."""


class RemoteMismatch(OSError):
    """The objects present after an upload do not match the manifest (retried)."""


@dataclass(frozen=True)
class Uploaded:
    """A checkpoint whose remote manifest is durable."""

    name: str
    step: int
    size_bytes: int
    """The checkpoint's bytes (its files and the manifest)."""
    sent_bytes: int
    """Bytes sent this time (0: an identical copy was already there)."""
    replaced: bool
    """A different remote copy of this step was there and was replaced."""


def _never() -> bool:
    return False


def read_local_manifest(path: Path) -> tuple[Manifest, bytes]:
    """The manifest of a committed local checkpoint and its bytes, or LocalCheckpointError."""
    step = parse_step(path.name)
    if step is None:
        raise LocalCheckpointError(
            f"{path}: not a managed checkpoint (step-NNNNNNNNN); only those are mirrored"
        )
    try:
        fd = os.open(path / MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            raw = os.read(fd, MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise LocalCheckpointError(
            f"{path}: gone or not committed (no {MANIFEST_NAME}); it was probably pruned "
            "locally before its upload"
        ) from None
    except OSError as exc:
        raise LocalCheckpointError(f"{path / MANIFEST_NAME}: {exc}") from None
    try:
        manifest = parse_manifest(raw, reserved=(MANIFEST_NAME,))
    except ManifestError as exc:
        raise LocalCheckpointError(f"{path / MANIFEST_NAME}: {exc}") from None
    if manifest.step != step:
        raise LocalCheckpointError(f"{path / MANIFEST_NAME}: step {manifest.step}, not {step}")
    return manifest, raw


def _digest(
    path: Path, algo: HashAlgo, size_bytes: int, stop: threading.Event, buffer: bytearray
) -> str | None:
    """Digest of exactly `size_bytes` of a regular file (no symlinks); None when stopped."""
    view = memoryview(buffer)
    hasher = algo.new()
    total = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with open(fd, "rb", buffering=0, closefd=False) as handle:
            while total < size_bytes:
                if stop.is_set():
                    return None
                got = handle.readinto(view[: min(len(buffer), size_bytes - total)])
                if not got:
                    raise ValueError(f"ends after {total} of {size_bytes} bytes")
                hasher.update(view[:got])
                total += got
            if handle.readinto(view[:1]):
                raise ValueError(f"longer than {size_bytes} bytes")
    finally:
        os.close(fd)
    return hasher.hexdigest()


class LocalVerifier:
    """Checks a local checkpoint's digests in a thread of its own while it uploads."""

    def __init__(self, base: Path, manifest: Manifest, *, chunk_bytes: int) -> None:
        self.base = base
        self.manifest = manifest
        self.chunk_bytes = chunk_bytes
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"stalwart-verify-{base.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        buffer = bytearray(self.chunk_bytes)
        for entry in self.manifest.files:
            try:
                digest = _digest(
                    self.base / entry.path,
                    self.manifest.hash,
                    entry.size_bytes,
                    self._stop,
                    buffer,
                )
            except (OSError, ValueError) as exc:
                self.problem = f"{entry.path}: {exc}"
                return
            if digest is None:
                return
            if digest != entry.digest:
                self.problem = (
                    f"{entry.path}: {self.manifest.hash.value} is {digest}, "
                    f"manifest says {entry.digest}"
                )
                return

    def result(self) -> str | None:
        """Wait for the check; the problem found, or None when the copy is intact."""
        self._thread.join()
        return self.problem

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def upload_checkpoint(
    remote: Remote,
    local: Path,
    *,
    abort: Callable[[], bool] = _never,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Uploaded:
    """Upload one committed local checkpoint to `<remote>/<name>/`, manifest last.

    Raises LocalCheckpointError when the local copy cannot be uploaded (not retryable),
    TransferAborted when `abort()` turned true, and whatever the file system raises for
    remote trouble (retry).
    """
    manifest, raw = read_local_manifest(local)
    name = local.name
    manifest_rel = f"{name}/{MANIFEST_NAME}"
    total_bytes = manifest.total_bytes + len(raw)
    verifier = LocalVerifier(local, manifest, chunk_bytes=chunk_bytes)
    verifier.start()
    try:
        present = remote.objects(name)
        replaced = False
        if MANIFEST_NAME in present:
            there = remote.read_bytes(manifest_rel, MAX_MANIFEST_BYTES)
            if there == raw and size_problem(manifest, present) is None:
                problem = verifier.result()
                if problem is not None:
                    raise LocalCheckpointError(f"{local}: {problem}")
                logger.info("checkpoint %s is already at %s", name, remote.show(name))
                return Uploaded(name, manifest.step, total_bytes, 0, replaced=False)
            replaced = True
            logger.warning(
                "replacing %s: a different copy of this step is there (an earlier run?)",
                remote.show(name),
            )
            remote.remove([manifest_rel])  # un-commit it first: never a mix under a manifest
        if present:
            remote.remove(f"{name}/{rel}" for rel in present if rel != MANIFEST_NAME)
        if abort():
            raise TransferAborted("stopped before the upload")
        data_rels = [f"{name}/{entry.path}" for entry in manifest.files]
        try:
            remote.put_files(
                [
                    (local / entry.path, rel)
                    for entry, rel in zip(manifest.files, data_rels, strict=True)
                ],
                abort=abort,
            )
        except FileNotFoundError:
            if not (local / MANIFEST_NAME).exists():
                raise LocalCheckpointError(f"{local}: removed locally during its upload") from None
            raise
        after = remote.objects(name)
        mismatch = size_problem(manifest, after)
        if mismatch is not None:
            raise RemoteMismatch(f"{remote.show(name)} after upload: {mismatch}")
        problem = verifier.result()
        if problem is not None:
            raise LocalCheckpointError(
                f"{local} fails verification ({problem}); its manifest is not uploaded, so the "
                "remote copy is never restored from"
            )
        if abort():
            raise TransferAborted("stopped before the manifest")
        remote.sync(data_rels)
        remote.write_bytes(manifest_rel, raw)
    finally:
        verifier.stop()
    return Uploaded(name, manifest.step, total_bytes, total_bytes, replaced=replaced)
