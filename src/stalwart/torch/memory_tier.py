"""The Checkpointer's two tiers: one snapshot committed to memory first, then to disk.

Under `stalwart run` with `checkpoint.memory.enabled`, the supervisor names a tmpfs
directory in STALWART_MEMORY_DIR (checkpoint/tiers.py). Every save the memory interval
asks for is committed there (a few milliseconds for a tmpfs); when the durable interval is
due too (or a save was asked for, or a drain is on), the same snapshot is then written to
the checkpoint directory. Both commits run in the save's background thread, memory first:
the newest state is safe from a crash before the slower disk write begins.

A memory commit that fails (the tmpfs is full) is logged and does not stop the disk write;
the tier keeps only the newest checkpoint (two while the next is being written).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from stalwart.checkpoint import CheckpointStore, CheckpointStoreError, Committed, Transaction
from stalwart.checkpoint.tiers import MEMORY_FRACTION_ENV, fit_problem, keep_newest
from stalwart.client import Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Commits:
    """What one save committed, per tier."""

    disk: Committed | None
    memory: Committed | None
    memory_done_s: float | None = None
    """The Checkpointer's clock when the memory commit finished."""


def write_tiers(
    txs: Sequence[tuple[str, Transaction]],
    write: Callable[[Transaction], Committed],
    clock: Callable[[], float],
) -> Commits:
    """Commit the same plan into each transaction, in order (memory first). A failed
    memory commit is logged and the disk one still made; a failed disk commit raises."""
    disk: Committed | None = None
    memory: Committed | None = None
    memory_done_s: float | None = None
    for index, (tier, tx) in enumerate(txs):
        if tier == "memory":
            try:
                memory = write(tx)
            except (CheckpointStoreError, OSError) as exc:
                if index == len(txs) - 1:
                    raise
                logger.warning(
                    "checkpoint %s not kept in the memory tier (%s); writing it to disk",
                    tx.name,
                    exc,
                )
                continue
            memory_done_s = clock()
            keep_newest(tx.store.root)
        else:
            try:
                disk = write(tx)
            finally:
                for _, rest in txs[index + 1 :]:
                    rest.abort()
    return Commits(disk=disk, memory=memory, memory_done_s=memory_done_s)


def abort_all(txs: Sequence[tuple[str, Transaction]]) -> None:
    for _, tx in txs:
        tx.abort()


def tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tuples)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(value) for value in tree.values())
    if isinstance(tree, list | tuple):
        return sum(tensor_bytes(value) for value in tree)
    return 0


class MemoryTier:
    """The memory tier as one Checkpointer uses it: its store, and whether a snapshot fits."""

    def __init__(self, root: Path, *, fraction: float, run_id: str = "", attempt: int = 0) -> None:
        self.store = CheckpointStore(root, run_id=run_id, attempt=attempt)
        self.fraction = fraction
        self.refused: str | None = None
        """Why the tier was given up for this process (a snapshot did not fit)."""

    @classmethod
    def of(cls, client: Client, env: Mapping[str, str]) -> MemoryTier | None:
        """The memory tier the supervisor keeps for this job (None: none); the client then
        paces saves by the memory interval too, and each manifest gets the latest loss."""
        if client.memory_dir is None:
            return None
        tier = cls(
            client.memory_dir,
            fraction=float(env.get(MEMORY_FRACTION_ENV, "") or 0.25),
            run_id=client.run_id,
            attempt=client.attempt,
        )
        tier.store.annotate = client.loss_meta
        client.memory_tier = True
        return tier

    def admits(self, saves: object, stateful: Sequence[Any]) -> bool:
        """Whether a snapshot of this state may go to memory (its size: the snapshot
        buffers `saves` holds, or the state dicts' tensors before the first save); the
        first refusal is warned with the figures and ends the tier for this process (the
        disk tier goes on)."""
        if self.refused is not None:
            return False
        size = int(getattr(saves, "buffer_bytes", 0)) or sum(
            tensor_bytes(obj.state_dict()) for obj in stateful
        )
        problem = fit_problem(size, int(psutil.virtual_memory().available), self.fraction)
        if problem is None:
            return True
        self.refused = problem
        logger.warning("memory tier off for this process: %s", problem)
        return False
