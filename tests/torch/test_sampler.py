"""ResumableSampler: a resume hands out exactly the rest of the epoch, then the same epochs."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.torch import ResumableSampler


def take(sampler: ResumableSampler, count: int) -> list[int]:
    """`count` indices, moving on to the next epoch when one runs out (as a training loop)."""
    taken: list[int] = []
    while len(taken) < count:
        before = len(taken)
        taken.extend(itertools.islice(iter(sampler), count - len(taken)))
        if len(taken) == before and len(sampler) == 0:
            break
    return taken


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 60),
    replicas=st.integers(1, 4),
    consumed=st.integers(0, 200),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
)
def test_resume_anywhere_continues_the_same_sequence(
    size: int, replicas: int, consumed: int, shuffle: bool, drop_last: bool
) -> None:
    def make(rank: int) -> ResumableSampler:
        return ResumableSampler(
            size, seed=7, shuffle=shuffle, num_replicas=replicas, rank=rank, drop_last=drop_last
        )

    for rank in range(replicas):
        reference = take(make(rank), consumed + 50)
        first = make(rank)
        assert take(first, consumed) == reference[:consumed]
        resumed = make(rank)
        resumed.load_state_dict(first.state_dict())
        assert take(resumed, 50) == reference[consumed : consumed + 50]


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 60), replicas=st.integers(1, 4), epoch=st.integers(0, 5))
def test_ranks_partition_each_epoch(size: int, replicas: int, epoch: int) -> None:
    seen: list[int] = []
    for rank in range(replicas):
        sampler = ResumableSampler(size, seed=3, num_replicas=replicas, rank=rank)
        seen.extend(sampler.indices(epoch))
        assert len(sampler.indices(epoch)) == len(sampler)
    assert set(seen) == set(range(size))
    assert len(seen) == -(-size // replicas) * replicas  # padded, as DistributedSampler


def test_mid_epoch_resume_yields_exactly_the_remaining_indices() -> None:
    sampler = ResumableSampler(20, seed=1)
    epoch0 = sampler.indices(0)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(13)]
    state = sampler.state_dict()
    assert state["epoch"] == 0 and state["offset"] == 13
    resumed = ResumableSampler(20, seed=1)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert consumed + rest == epoch0
    assert (resumed.epoch, resumed.offset) == (1, 0)
    assert list(resumed) == sampler.indices(1) != epoch0
    assert sorted(epoch0) == list(range(20))


def test_set_epoch_keeps_a_resumed_epoch_and_resets_a_new_one() -> None:
    sampler = ResumableSampler(10, seed=0)
    sampler.load_state_dict({**sampler.state_dict(), "epoch": 3, "offset": 4})
    sampler.set_epoch(3)  # the usual `for epoch in ...: sampler.set_epoch(epoch)` loop
    assert sampler.offset == 4
    assert list(sampler) == sampler.indices(3)[4:]
    sampler.set_epoch(6)
    assert (sampler.epoch, sampler.offset) == (6, 0)


def test_dataloader_position_is_the_consumed_batches() -> None:
    data = torch.arange(30)
    sampler = ResumableSampler(data, seed=2)
    loader = torch.utils.data.DataLoader(data, sampler=sampler, batch_size=4)
    batches = iter(loader)
    seen = [next(batches), next(batches)]
    assert sampler.offset == 8
    resumed = ResumableSampler(data, seed=2)
    resumed.load_state_dict(sampler.state_dict())
    rest = list(torch.utils.data.DataLoader(data, sampler=resumed, batch_size=4))
    assert torch.cat(seen + rest).tolist() == sampler.indices(0)


def test_refuses_another_dataset_or_sharding_adopts_the_saved_seed() -> None:
    saved = ResumableSampler(10, seed=1, num_replicas=2, rank=0).state_dict()
    with pytest.raises(ValueError, match=r"size: saved 10, now 11; num_replicas: saved 2, now 1"):
        ResumableSampler(11, seed=1).load_state_dict(saved)
    other_seed = ResumableSampler(10, seed=9, num_replicas=2, rank=0)
    other_seed.load_state_dict(saved)
    assert other_seed.seed == 1
    assert other_seed.indices(0) == ResumableSampler(10, seed=1, num_replicas=2).indices(0)
    with pytest.raises(ValueError, match="rank 2"):
        ResumableSampler(10, num_replicas=2, rank=2)
