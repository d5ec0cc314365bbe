"""Retention: the pure decision, and its effect on a real checkpoint directory."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from stalwart.checkpoint import (
    CheckpointState,
    FsOps,
    Keep,
    MemoryVerifyCache,
    RetentionItem,
    RetentionPolicy,
    apply_retention,
    disk_free_bytes,
    find_newest_intact,
    list_checkpoints,
    plan_retention,
    prepare_resume,
    retention_items,
    verify_checkpoint,
)
from tests.checkpoint.helpers import flip_byte, save

MIB = 1024 * 1024


def _item(
    step: int, state: CheckpointState = CheckpointState.INTACT, **kw: object
) -> RetentionItem:
    name = f"step-{step:09d}"
    return RetentionItem(name, Path(name), step, int(kw.pop("size", MIB)), state, **kw)  # type: ignore[arg-type]


def _names(items: tuple[RetentionItem, ...]) -> list[str]:
    return [i.name for i in items]


def test_keeps_newest_n_and_milestones() -> None:
    items = [_item(s) for s in range(100, 1100, 100)]
    plan = plan_retention(items, RetentionPolicy(keep_last=3, keep_every_steps=500))
    assert _names(plan.delete) == [f"step-{s:09d}" for s in (100, 200, 300, 400, 600, 700)]
    reasons = {i.step: r for i, r in plan.kept}
    assert reasons == {
        1000: Keep.NEWEST_VERIFIED,
        900: Keep.KEEP_LAST,
        800: Keep.KEEP_LAST,
        500: Keep.MILESTONE,
    }
    assert plan.short_bytes == 0 and plan.warnings == ()


def test_newest_verified_is_refused_even_when_asked() -> None:
    items = [_item(1), _item(2), _item(3, CheckpointState.CORRUPT)]
    plan = plan_retention(
        items, RetentionPolicy(keep_last=0), requested={"step-000000002", "step-000000001"}
    )
    assert _names(plan.delete) == ["step-000000001"]
    assert plan.refused == (("step-000000002", Keep.NEWEST_VERIFIED.value),)


def test_pinned_and_newer_unverified_are_kept() -> None:
    items = [
        _item(1, pinned=True),
        _item(2),
        _item(3),
        _item(4, CheckpointState.UNVERIFIED),
        _item(0, CheckpointState.UNVERIFIED),
    ]
    plan = plan_retention(items, RetentionPolicy(keep_last=1))
    assert _names(plan.delete) == ["step-000000000", "step-000000002"]
    kept = {i.step: r for i, r in plan.kept}
    assert kept[4] is Keep.NEWER_UNVERIFIED and kept[1] is Keep.PINNED


def test_low_disk_prunes_oldest_kept_first_and_warns() -> None:
    items = [_item(s) for s in (1, 2, 3, 4)]
    policy = RetentionPolicy(keep_last=4, min_free_bytes=2 * MIB)
    plan = plan_retention(items, policy, free_bytes=MIB // 2, expected_save_bytes=MIB)
    # need 3 MiB free: 0.5 + 1 (step 1) + 1 (step 2) + 1 (step 3) = 3.5
    assert _names(plan.delete) == ["step-000000001", "step-000000002", "step-000000003"]
    assert plan.short_bytes == 0
    assert len(plan.warnings) == 3 and "low disk space" in plan.warnings[0]


def test_says_so_when_nothing_more_can_be_pruned() -> None:
    items = [_item(1, pinned=True), _item(2), _item(3, CheckpointState.QUARANTINED)]
    policy = RetentionPolicy(keep_last=3, min_free_bytes=10 * MIB)
    plan = plan_retention(items, policy, free_bytes=MIB)
    assert plan.delete == ()
    assert plan.short_bytes == 10 * MIB + MIB - MIB  # floor + next save (size of newest) - free
    assert "nothing more can be pruned" in plan.warnings[-1]
    with_quarantine = plan_retention(items, policy, free_bytes=MIB, prune_quarantined=True)
    assert _names(with_quarantine.delete) == ["step-000000003"]


states = st.sampled_from(list(CheckpointState))


policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(0, 5),
    keep_every_steps=st.none() | st.integers(1, 7),
    min_free_bytes=st.integers(0, 50),
)
plan_options = st.fixed_dictionaries(
    {
        "free_bytes": st.none() | st.integers(0, 50),
        "requested": st.sets(st.integers(0, 30).map(lambda s: f"step-{s:09d}")),
        "prune_quarantined": st.booleans(),
    }
)


@given(
    st.lists(st.tuples(st.integers(0, 30), states, st.booleans(), st.integers(0, 10)), max_size=15),
    policies,
    plan_options,
)
def test_plan_never_deletes_newest_verified_or_pinned(
    raw: list[tuple[int, CheckpointState, bool, int]],
    policy: RetentionPolicy,
    options: dict[str, Any],
) -> None:
    items = {
        step: _item(step, state, pinned=pinned, size=size) for step, state, pinned, size in raw
    }
    plan = plan_retention(items.values(), policy, **options)
    intact = [s for s, i in items.items() if i.state is CheckpointState.INTACT]
    deleted = {i.step for i in plan.delete}
    if intact:
        assert max(intact) not in deleted
    assert not any(items[s].pinned for s in deleted)
    assert len(plan.delete) + len(plan.kept) == len(items)
    assert plan.short_bytes >= 0


class RetentionOnDisk(RuleBasedStateMachine):
    """Random saves, corruptions and prunes on a real directory (tiny checkpoints)."""

    runs = itertools.count()

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.root = base / f"run{next(self.runs)}"
        self.next_step = 1
        self.truly_intact: set[int] = set()
        self.cache = MemoryVerifyCache()

    @rule()
    def save(self) -> None:
        save(self.root, self.next_step, size_bytes=64, ops=_NoSync())
        self.truly_intact.add(self.next_step)
        self.next_step += 1

    @rule(data=st.data())
    def corrupt(self, data: st.DataObject) -> None:
        if self.truly_intact:
            step = data.draw(st.sampled_from(sorted(self.truly_intact)))
            flip_byte(self.root / f"step-{step:09d}" / "model.bin")
            self.truly_intact.discard(step)
            self.cache = MemoryVerifyCache()  # a restart: no stale entries within one mtime tick

    @rule(
        keep_last=st.integers(0, 3),
        every=st.none() | st.integers(1, 4),
        free=st.none() | st.integers(0, 400),
        asked=st.sets(st.integers(0, 12)),
        restart=st.booleans(),
    )
    def prune(
        self, keep_last: int, every: int | None, free: int | None, asked: set[int], restart: bool
    ) -> None:
        if restart:
            decision = prepare_resume(self.root, cache=self.cache)
            expected = max(self.truly_intact) if self.truly_intact else None
            assert (decision.resume_from.step if decision.resume_from else None) == expected
        infos = list_checkpoints(self.root, full=True, cache=self.cache)
        plan = plan_retention(
            retention_items(infos),
            RetentionPolicy(keep_last=keep_last, keep_every_steps=every, min_free_bytes=300),
            free_bytes=free,
            requested={f"step-{s:09d}" for s in asked},
        )
        newest = max(self.truly_intact) if self.truly_intact else None
        deleted = {int(path.name.split("-")[1]) for path in apply_retention(self.root, plan)}
        assert newest not in deleted, f"pruned the newest intact checkpoint {newest}"
        self.truly_intact -= deleted

    @invariant()
    def newest_intact_survives(self) -> None:
        if self.truly_intact:
            newest = max(self.truly_intact)
            path = self.root / f"step-{newest:09d}"
            assert verify_checkpoint(path).intact
            found = find_newest_intact(self.root, cache=self.cache).newest
            assert found is not None and found.step == newest


class _NoSync(FsOps):
    """Durability is not what these tests are about; skip the fsyncs to stay fast."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_file(self, path: Path) -> None:
        pass

    def fsync_dir(self, path: Path) -> None:
        pass


def test_retention_on_disk_never_deletes_the_newest_intact(tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: RetentionOnDisk(tmp_path),
        settings=settings(max_examples=20, stateful_step_count=15, deadline=None),
    )


def test_disk_free_bytes_reads_the_file_system(tmp_path: Path) -> None:
    assert disk_free_bytes(tmp_path) > 0


@pytest.mark.parametrize("bad", [{"keep_last": -1}, {"keep_every_steps": 0}])
def test_policy_validates(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetentionPolicy(**bad)
