"""Small checkpoints for the remote tests, and a bitwise view of a directory tree."""

from __future__ import annotations

import os
from pathlib import Path

from stalwart.checkpoint import CheckpointStore, Committed

FILES = ("model.bin", "optim/state.bin", "rng.bin")
"""Three files, one nested: an upload can be interrupted at each, and at the manifest."""


def content(step: int, name: str, size_bytes: int) -> bytes:
    pattern = f"step {step} {name};".encode()
    return (pattern * (size_bytes // len(pattern) + 1))[:size_bytes]


def save(root: Path, step: int, *, size_bytes: int = 20_000, run_id: str = "run") -> Committed:
    """A committed local checkpoint whose bytes depend on the step."""
    store = CheckpointStore(root, run_id=run_id)
    return store.save_bytes(
        step, {name: content(step, name, size_bytes // (i + 1)) for i, name in enumerate(FILES)}
    )


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative path -> bytes)."""
    found = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            full = Path(dirpath) / name
            found[str(full.relative_to(path))] = full.read_bytes()
    return found
