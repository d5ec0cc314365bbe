"""Durability under power loss, with a model file system that forgets whatever was not
fsynced (tests/checkpoint/powerloss.py). Each fsync of the commit protocol is needed by
at least one test here: removing it makes `test_committed_save_survives_power_loss` fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stalwart.checkpoint import CheckpointStore, find_newest_intact, prepare_resume
from tests.checkpoint.helpers import save
from tests.checkpoint.powerloss import PowerCut, PowerLossFs

FILES = {"model.bin": b"new weights " * 100, "shards/0.bin": b"shard zero " * 50}


def _world(tmp_path: Path, cut_after: int | None) -> tuple[PowerLossFs, CheckpointStore]:
    disk = tmp_path / "disk"
    save(disk / "ck", 1)  # durable before the model starts
    model = PowerLossFs(disk, cut_after=cut_after)
    return model, CheckpointStore(disk / "ck", ops=model)


def test_committed_save_survives_power_loss(tmp_path: Path) -> None:
    model, store = _world(tmp_path, cut_after=None)
    store.save_bytes(2, FILES)
    after = model.materialize(tmp_path / "after")
    found = find_newest_intact(after / "ck")
    assert found.newest is not None, found.skipped
    assert found.newest.name == "step-000000002", [s.reason for s in found.skipped]


def _count_ops(tmp_path: Path) -> int:
    model, store = _world(tmp_path / "count", cut_after=None)
    store.save_bytes(2, FILES)
    return model.ops_done


def test_power_cut_at_every_point_leaves_previous_or_new(tmp_path: Path) -> None:
    total = _count_ops(tmp_path)
    assert total > 10
    outcomes = []
    for cut_after in range(total + 1):
        run = tmp_path / f"cut{cut_after}"
        run.mkdir()
        model, store = _world(run, cut_after=cut_after)
        try:
            store.save_bytes(2, FILES)
            returned = True
        except PowerCut:
            returned = False
        after = model.materialize(run / "after")
        decision = prepare_resume(after / "ck")
        assert decision.resume_from is not None, model.log
        name = decision.resume_from.name
        assert name in ("step-000000001", "step-000000002"), model.log
        if returned:
            assert name == "step-000000002", model.log  # durable once save_bytes returned
        outcomes.append(name)
    # The new checkpoint becomes visible exactly once, at the parent directory's fsync.
    assert outcomes[-1] == "step-000000002"
    first_new = outcomes.index("step-000000002")
    assert all(o == "step-000000002" for o in outcomes[first_new:])


def test_power_cut_before_parent_fsync_keeps_previous(tmp_path: Path) -> None:
    model, store = _world(tmp_path, cut_after=None)
    seen: list[str] = []

    def cut(stage: object) -> None:
        seen.append(str(stage))
        if "RENAMED" in str(stage):
            model.dead = True  # the rename happened in the page cache only
            raise PowerCut("before parent fsync")

    store.on_stage = cut
    with pytest.raises(PowerCut):
        store.save_bytes(2, FILES)
    after = model.materialize(tmp_path / "after")
    found = find_newest_intact(after / "ck")
    assert found.newest is not None
    assert found.newest.name == "step-000000001"
