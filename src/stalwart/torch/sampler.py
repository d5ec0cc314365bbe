"""A seeded sampler that remembers where it is: epoch and offset, like DistributedSampler.

    sampler = ResumableSampler(dataset, seed=0)
    loader = DataLoader(dataset, sampler=sampler, batch_size=32)   # num_workers=0, see below
    # ResumableSampler(dataset, seed=0, batch_size=32): a divergence rollback skips batches
    ckpt = Checkpointer(model, optimizer, data=sampler)
    step = ckpt.restore()                  # epoch and offset come back with it
    while step < total:
        for batch in loader:               # the rest of the current epoch, then the next
            ...

Each epoch's order is a permutation drawn from `seed + epoch` alone, so a resumed run
sees exactly the indices the uninterrupted one would have. `offset` counts the indices
handed out in the current epoch; an exhausted epoch moves on to the next by itself.

The offset counts what the sampler handed out, which is what training consumed when the
loader has no workers. A loader with workers prefetches `prefetch_factor * num_workers`
batches: after a resume those batches are skipped, not repeated (the run stays valid, it
is no longer bitwise the same as an uninterrupted one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sized
from typing import Any

import torch

logger = logging.getLogger(__name__)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Shuffled (or sequential) indices of a dataset, sharded over `num_replicas` ranks."""

    def __init__(
        self,
        data_source: Sized | int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        batch_size: int = 1,
    ) -> None:
        if num_replicas is None or rank is None:
            world, me = 1, 0
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                world, me = torch.distributed.get_world_size(), torch.distributed.get_rank()
            num_replicas = world if num_replicas is None else num_replicas
            rank = me if rank is None else rank
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.size = data_source if isinstance(data_source, int) else len(data_source)
        if self.size < 0:
            raise ValueError(f"a dataset has >= 0 items, got {self.size}")
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        if batch_size < 1:
            raise ValueError(f"batch_size is >= 1, got {batch_size}")
        self.batch_size = batch_size
        """Indices per batch on this rank: what `skip_batches` moves by."""
        if drop_last:
            self.num_samples = self.size // num_replicas
        else:
            self.num_samples = -(-self.size // num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        """The epoch being handed out."""
        self.offset = 0
        """Indices of `epoch` already handed out by this rank."""
        self._order: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        """Indices per epoch on this rank (not what is left of the current one)."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch` from its start; the current epoch (e.g. after a resume) is kept."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.offset = 0

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices for `epoch`, in order."""
        if self._order is not None and self._order[0] == epoch:
            return self._order[1]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.drop_last:
            order = order[: self.total_size]
        elif order:
            padding = self.total_size - len(order)
            order += (order * (padding // len(order) + 1))[:padding]
        mine = order[self.rank : self.total_size : self.num_replicas]
        self._order = (epoch, mine)
        return mine

    def __iter__(self) -> Iterator[int]:
        order = self.indices(self.epoch)
        while self.offset < len(order):
            index = order[self.offset]
            self.offset += 1
            yield index
        self.epoch += 1
        self.offset = 0

    def skip(self, count: int) -> None:
        """Move past the next `count` indices of this rank without handing them out (across
        epochs): after a divergence rollback, the data that caused it is not seen again."""
        if count < 0:
            raise ValueError(f"cannot skip {count} indices")
        if self.num_samples == 0:
            return
        position = self.epoch * self.num_samples + self.offset + count
        epoch, self.offset = divmod(position, self.num_samples)
        if epoch != self.epoch:
            self.epoch = epoch

    def skip_batches(self, batches: int) -> None:
        """Skip `batches` x `batch_size` indices (a divergence rollback, `Checkpointer`)."""
        self.skip(batches * self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "size": self.size,
            "shuffle": self.shuffle,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue where the saved sampler was, with its seed; ValueError if it ordered
        another dataset or sharding."""
        differ = [
            f"{key}: saved {state_dict.get(key)!r}, now {getattr(self, key)!r}"
            for key in ("size", "shuffle", "num_replicas", "drop_last")
            if state_dict.get(key) != getattr(self, key)
        ]
        if differ:
            raise ValueError(
                "the saved sampler ordered a different dataset or sharding ("
                + "; ".join(differ)
                + "); resuming it would repeat or skip samples. Use the same settings"
            )
        offset = int(state_dict["offset"])
        if not 0 <= offset <= self.num_samples:
            raise ValueError(f"saved offset {offset} is outside [0, {self.num_samples}]")
        seed = int(state_dict["seed"])
        if seed != self.seed:
            logger.warning("sampler: continuing the saved run's seed %d (not %d)", seed, self.seed)
            self.seed = seed
            self._order = None
        self.epoch = int(state_dict["epoch"])
        self.offset = offset
