"""What is in a remote checkpoint root: one listing, grouped by checkpoint, then each
checkpoint's manifest read and compared with the objects present.

A remote checkpoint is complete when its MANIFEST.json parses and every file it lists is
present with the listed size. Without a manifest it is an upload in progress or one that
was interrupted, and it is never restored from. Digests can only be checked after a
download (restore and pull do).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from stalwart.checkpoint.layout import MANIFEST_NAME, parse_step
from stalwart.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    parse_manifest,
)
from stalwart.remote.location import Remote

logger = logging.getLogger(__name__)


class RemoteState(enum.Enum):
    COMPLETE = "complete"
    """The manifest parses and every listed file is present with its size."""
    INCOMPLETE = "incomplete"
    """No manifest: an upload in progress or interrupted, or a deletion; never restored."""
    INVALID = "invalid"
    """A manifest that does not parse or does not match the objects present."""


@dataclass(frozen=True)
class RemoteEntry:
    """One checkpoint directory in a listing, before its manifest is read."""

    name: str
    step: int
    objects: Mapping[str, int]
    """Path inside the checkpoint -> size, every object present (the manifest included)."""

    @property
    def has_manifest(self) -> bool:
        return MANIFEST_NAME in self.objects

    @property
    def size_bytes(self) -> int:
        return sum(self.objects.values())


@dataclass(frozen=True)
class RemoteCheckpoint:
    """One remote checkpoint and what its manifest says about it."""

    name: str
    step: int
    url: str
    state: RemoteState
    reason: str
    size_bytes: int
    """Bytes of the objects present (the manifest included)."""
    objects: Mapping[str, int] = field(repr=False)
    manifest: Manifest | None = field(default=None, repr=False)
    raw_manifest: bytes | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.state is RemoteState.COMPLETE


def group_objects(objects: Mapping[str, int]) -> list[RemoteEntry]:
    """Objects under the root (relative path -> size) grouped into checkpoint directories
    (`step-000001234/...`), newest first; anything else under the root is ignored."""
    groups: dict[str, dict[str, int]] = {}
    for rel, size in objects.items():
        if "/" not in rel:
            continue
        top, inner = rel.split("/", 1)
        if parse_step(top) is None or not inner:
            continue
        groups.setdefault(top, {})[inner] = size
    entries = []
    for name, inner_objects in groups.items():
        step = parse_step(name)
        assert step is not None
        entries.append(RemoteEntry(name, step, MappingProxyType(inner_objects)))
    entries.sort(key=lambda e: (e.step, e.name), reverse=True)
    return entries


def size_problem(manifest: Manifest, objects: Mapping[str, int]) -> str | None:
    """Why the objects present do not match the manifest (first problem), or None."""
    for entry in manifest.files:
        size = objects.get(entry.path)
        if size is None:
            return f"{entry.path}: missing"
        if size != entry.size_bytes:
            return f"{entry.path}: {size} bytes, manifest says {entry.size_bytes}"
    return None


def judge(entry: RemoteEntry, raw: bytes | None, url: str) -> RemoteCheckpoint:
    """The state of one remote checkpoint from its listing and its manifest's bytes."""

    def make(state: RemoteState, reason: str, manifest: Manifest | None = None) -> RemoteCheckpoint:
        return RemoteCheckpoint(
            name=entry.name,
            step=entry.step,
            url=url,
            state=state,
            reason=reason,
            size_bytes=entry.size_bytes,
            objects=entry.objects,
            manifest=manifest,
            raw_manifest=raw if manifest is not None else None,
        )

    if raw is None:
        return make(RemoteState.INCOMPLETE, "no manifest (upload in progress or interrupted)")
    try:
        manifest = parse_manifest(raw, reserved=(MANIFEST_NAME,))
    except ManifestError as exc:
        return make(RemoteState.INVALID, f"{MANIFEST_NAME}: {exc}")
    if manifest.step != entry.step:
        return make(RemoteState.INVALID, f"{MANIFEST_NAME} is of step {manifest.step}")
    problem = size_problem(manifest, entry.objects)
    if problem is not None:
        return make(RemoteState.INVALID, problem, manifest)
    return make(RemoteState.COMPLETE, "manifest and sizes match", manifest)


def scan_remote(remote: Remote) -> list[RemoteEntry]:
    """The checkpoint directories under the root, newest first (one listing)."""
    return group_objects(remote.objects())


def read_manifest_bytes(remote: Remote, name: str) -> bytes | None:
    """The bytes of a remote checkpoint's manifest (at most the cap + 1), None if absent."""
    return remote.read_bytes(f"{name}/{MANIFEST_NAME}", MAX_MANIFEST_BYTES)


def check(remote: Remote, entry: RemoteEntry) -> RemoteCheckpoint:
    """Read one checkpoint's manifest and judge it (a request only if it has a manifest)."""
    raw = read_manifest_bytes(remote, entry.name) if entry.has_manifest else None
    return judge(entry, raw, remote.show(entry.name))


def list_remote(remote: Remote) -> list[RemoteCheckpoint]:
    """Every remote checkpoint, newest first, each with its state (for `checkpoints list
    --remote` and remote retention). Raises what the file system raises when unreachable."""
    return [check(remote, entry) for entry in scan_remote(remote)]
