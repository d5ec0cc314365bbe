"""MANIFEST.json, format 1 (DESIGN.md "Checkpoint on disk"): strict, size-capped parsing.

    {"format": 1, "step": int, "created_unix": float, "run_id": str, "attempt": int,
     "hash": "xxh3_128" | "sha256", "files": [{"path", "bytes", "digest"}], "meta": {}}

A manifest is input from disk, so it is parsed like hostile input: unknown or duplicate
keys, wrong types, NaN, paths that could leave the checkpoint directory and anything over
the caps are refused with the reason. Extensions go in `meta`; a new layout is format 2.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import xxhash

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
"""A manifest lists files, ~150 bytes each; 8 MiB is ~50,000 files. Larger is refused unread."""
MAX_FILES = 100_000
MAX_PATH_CHARS = 4096
MAX_RUN_ID_CHARS = 256
_TOP_KEYS = frozenset(
    ("format", "step", "created_unix", "run_id", "attempt", "hash", "files", "meta")
)
_FILE_KEYS = frozenset(("path", "bytes", "digest"))
_HEX = frozenset("0123456789abcdef")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class HashAlgo(enum.Enum):
    XXH3_128 = "xxh3_128"
    """Default: fast (~10 GB/s), not cryptographic; catches corruption, not forgery."""
    SHA256 = "sha256"
    """For checkpoints that cross a trust boundary (remote copies)."""

    def new(self) -> Hasher:
        if self is HashAlgo.XXH3_128:
            hasher: Hasher = xxhash.xxh3_128()
            return hasher
        return hashlib.sha256()

    @property
    def hex_chars(self) -> int:
        return 32 if self is HashAlgo.XXH3_128 else 64


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative to the checkpoint directory, `/`-separated, never escaping it."""
    size_bytes: int
    digest: str
    """Lowercase hex of the manifest's hash algorithm over the whole file."""


@dataclass(frozen=True)
class Manifest:
    step: int
    created_unix: float
    run_id: str
    attempt: int
    hash: HashAlgo
    files: tuple[FileEntry, ...]
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


class ManifestError(ValueError):
    """The manifest bytes are not a valid format-1 manifest; the message says why."""


def path_problem(path: str) -> str | None:
    """Why `path` may not appear in a manifest (escapes, absolute, odd), or None if it may."""
    if not path:
        return "empty path"
    if len(path) > MAX_PATH_CHARS:
        return f"path longer than {MAX_PATH_CHARS} characters"
    if _CONTROL_RE.search(path):
        return "control character in path"
    if "\\" in path:
        return "backslash in path (paths are '/'-separated)"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "path has an empty, '.' or '..' component (it could leave the checkpoint)"
    return None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ManifestError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ManifestError(f"{name} is not valid JSON")


def _parse_file(index: int, raw: object, algo: HashAlgo) -> FileEntry:
    where = f"files[{index}]"
    _require(isinstance(raw, dict), f"{where} must be an object")
    assert isinstance(raw, dict)
    keys = set(raw)
    _require(keys == _FILE_KEYS, f"{where} must have exactly the keys path, bytes, digest")
    path, size, digest = raw["path"], raw["bytes"], raw["digest"]
    _require(isinstance(path, str), f"{where}.path must be a string")
    problem = path_problem(path)
    _require(problem is None, f"{where}.path {path!r}: {problem}")
    _require(_is_int(size) and size >= 0, f"{where}.bytes must be an integer >= 0")
    _require(
        isinstance(digest, str) and len(digest) == algo.hex_chars and set(digest) <= _HEX,
        f"{where}.digest must be {algo.hex_chars} lowercase hex characters ({algo.value})",
    )
    return FileEntry(path=path, size_bytes=size, digest=digest)


def parse_manifest(raw: bytes, *, reserved: Sequence[str] = ()) -> Manifest:
    """Parse and validate manifest bytes; `reserved` paths (the manifest) may not be listed."""
    _require(len(raw) <= MAX_MANIFEST_BYTES, f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8: {exc}") from None
    except RecursionError:
        raise ManifestError("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not valid JSON: {exc}") from None
    _require(isinstance(data, dict), "top level must be an object")
    keys = set(data)
    _require(not (keys - _TOP_KEYS), f"unknown keys {sorted(keys - _TOP_KEYS)}")
    _require(not (_TOP_KEYS - keys), f"missing keys {sorted(_TOP_KEYS - keys)}")
    _require(data["format"] == FORMAT_VERSION and _is_int(data["format"]), "format must be 1")
    step, attempt = data["step"], data["attempt"]
    _require(_is_int(step) and step >= 0, "step must be an integer >= 0")
    _require(_is_int(attempt) and attempt >= 0, "attempt must be an integer >= 0")
    created = data["created_unix"]
    _require(
        isinstance(created, int | float) and not isinstance(created, bool),
        "created_unix must be a number",
    )
    _require(math.isfinite(created), "created_unix must be finite")
    run_id = data["run_id"]
    _require(
        isinstance(run_id, str) and len(run_id) <= MAX_RUN_ID_CHARS,
        f"run_id must be a string of at most {MAX_RUN_ID_CHARS} characters",
    )
    try:
        algo = HashAlgo(data["hash"])
    except (ValueError, TypeError):
        raise ManifestError(
            f"hash must be one of {[a.value for a in HashAlgo]}, got {data['hash']!r}"
        ) from None
    files_raw = data["files"]
    _require(isinstance(files_raw, list), "files must be a list")
    _require(len(files_raw) <= MAX_FILES, f"more than {MAX_FILES} files")
    files = tuple(_parse_file(i, f, algo) for i, f in enumerate(files_raw))
    seen: set[str] = set()
    for entry in files:
        _require(entry.path not in seen, f"file {entry.path!r} listed twice")
        _require(entry.path not in reserved, f"file {entry.path!r} is reserved")
        seen.add(entry.path)
    # A file may not also be a directory of another listed file ("a" and "a/b").
    for entry in files:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            _require(prefix not in seen, f"{prefix!r} is listed as a file and as a directory")
    meta = data["meta"]
    _require(isinstance(meta, dict), "meta must be an object")
    return Manifest(
        step=step,
        created_unix=float(created),
        run_id=run_id,
        attempt=attempt,
        hash=algo,
        files=files,
        meta=MappingProxyType(meta),
    )


def render_manifest(manifest: Manifest) -> bytes:
    """The bytes of MANIFEST.json; `parse_manifest(render_manifest(m)) == m` for valid `m`."""
    document = {
        "format": FORMAT_VERSION,
        "step": manifest.step,
        "created_unix": manifest.created_unix,
        "run_id": manifest.run_id,
        "attempt": manifest.attempt,
        "hash": manifest.hash.value,
        "files": [
            {"path": f.path, "bytes": f.size_bytes, "digest": f.digest} for f in manifest.files
        ],
        "meta": dict(manifest.meta),
    }
    return (json.dumps(document, indent=1, allow_nan=False) + "\n").encode("utf-8")
