"""The framework layouts found in a checkpoint directory without configuration.

With `checkpoint.foreign_globs` unset, the scan takes as foreign checkpoints the layouts
stalwart knows how to check (foreign.py): Lightning's `*.ckpt` (and its `last.ckpt` alias),
the Hugging Face Trainer's `checkpoint-N/`, and any directory holding DCP's `.metadata`.
Setting the globs replaces this: only what they match is looked at.

A name that merely resembles one (`checkpoint-notes/`, `checkpoint_best/`) is a look-alike:
listed with the reason, never resumed from, quarantined or pruned. The content look-alike,
a `.ckpt` that is not a zip, is foreign.py's (`lightning_lookalike`).
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path

LIGHTNING_SUFFIX = ".ckpt"
DCP_METADATA = ".metadata"
"""The file torch.distributed.checkpoint writes last, naming every shard."""
_HF_RE = re.compile(r"checkpoint-\d+")
"""Trainer's PREFIX_CHECKPOINT_DIR and the global step."""
_HF_LOOKALIKE_RE = re.compile(r"checkpoint[-_].+", re.IGNORECASE)
_ZIP_MAGIC = b"PK\x03\x04"


class Detected(enum.Enum):
    CHECKPOINT = "checkpoint"
    """A layout stalwart checks: a foreign checkpoint like one matched by a glob."""
    LOOKALIKE = "lookalike"
    """Named like one, but not one: reported, never touched."""


def detect(name: str, path: Path | None = None) -> Detected | None:
    """What a top-level name of the checkpoint directory is, with no globs configured.

    `path` (the entry itself) lets a directory be recognised by its DCP `.metadata`
    (one stat); without it only names are looked at.
    """
    if name.startswith("."):
        return None
    if name.endswith(LIGHTNING_SUFFIX) or _HF_RE.fullmatch(name):
        return Detected.CHECKPOINT
    if path is not None and _holds_dcp_metadata(path):
        return Detected.CHECKPOINT
    if _HF_LOOKALIKE_RE.fullmatch(name):
        return Detected.LOOKALIKE
    return None


def lookalike_reason(name: str) -> str:
    return (
        f"named like a Hugging Face checkpoint, but {name!r} is not checkpoint-<step>: "
        "not a checkpoint stalwart knows; left alone (name it in checkpoint.foreign_globs "
        "to have it checked)"
    )


def _holds_dcp_metadata(path: Path) -> bool:
    # A file's `.metadata` fails with ENOTDIR, which isfile() answers False.
    return os.path.isfile(path / DCP_METADATA) and not os.path.islink(path)


def lightning_lookalike(head: bytes) -> bool:
    """Whether the first bytes of a `.ckpt` say it is not Lightning's (a torch.save zip).

    A torn save still starts with the zip magic, or a part of it (or is empty): that is a
    broken checkpoint, not a look-alike.
    """
    start = head[: len(_ZIP_MAGIC)]
    return bool(start) and not _ZIP_MAGIC.startswith(start)
