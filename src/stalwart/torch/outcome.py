"""What a Checkpointer save is and returns: the busy policy, the outcome per tier, the store."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stalwart.checkpoint import CheckpointStore, Committed

logger = logging.getLogger("stalwart.torch.checkpointer")


class Busy(enum.Enum):
    """What a save requested while the previous one is still being written does."""

    WAIT = "wait"
    """Block until the previous save is durable, then snapshot (the wait counts as stall)."""
    SKIP = "skip"
    """Skip this save and log it."""


@dataclass(frozen=True)
class SaveOutcome:
    """A save that became durable, with what it cost."""

    step: int
    committed: Committed
    stall_s: float
    """Time the training loop was blocked by this save."""
    persist_s: float
    """From the request until the checkpoint was durable (`tier` "memory": committed in
    the memory tier)."""
    tier: str = "disk"
    """Where `committed` is: "disk" (durable) or "memory" (the memory tier alone)."""
    memory: Committed | None = None
    """The same state committed in the memory tier too, if it was."""
    memory_persist_s: float | None = None
    """From the request until the memory commit."""

    @property
    def path(self) -> Path:
        return self.committed.path

    @property
    def size_bytes(self) -> int:
        return self.committed.manifest.total_bytes


def resolve_store(
    store: CheckpointStore | None, ckpt_dir: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> CheckpointStore:
    if store is not None:
        return store
    if env.get("STALWART_CKPT_DIR"):
        resolved = CheckpointStore.from_env(env)
        if ckpt_dir is not None and Path(ckpt_dir).resolve() != resolved.root.resolve():
            logger.info(
                "checkpointing to %s (STALWART_CKPT_DIR, set by the supervisor), not %s",
                resolved.root,
                ckpt_dir,
            )
        return resolved
    if ckpt_dir is None:
        raise ValueError(
            "no checkpoint directory: pass ckpt_dir= (or store=), or run under `stalwart run`"
        )
    return CheckpointStore(Path(ckpt_dir))
