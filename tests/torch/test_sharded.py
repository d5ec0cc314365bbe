"""Sharded (DCP) checkpoints written by two ranks under torchrun (gloo, 127.0.0.1)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from stalwart.checkpoint import CheckpointInvalid, CheckpointStore, VerifyLevel, verify_checkpoint
from stalwart.checkpoint.layout import parse_step
from stalwart.checkpoint.verify import read_manifest
from stalwart.torch import Checkpointer
from stalwart.torch.sharded import METADATA_FILE, agree_on_resume, rank_files
from tests.supervised import records
from tests.torchrun import run_two_ranks

TRAINER = Path(__file__).parents[1] / "trainers" / "ddp_train.py"
sys.path.insert(0, str(TRAINER.parent))
from ddp_train import Net  # noqa: E402


def torchrun(tmp_path: Path, out: Path, *args: str) -> None:
    """Two ranks on this machine, without a supervisor."""
    run_two_ranks(tmp_path / "scratch", TRAINER, "--out", str(out), *args)


def final_digests(out: Path) -> set[str]:
    found = [r for rank in (0, 1) for r in records(out / f"rank-{rank}.jsonl")]
    return {str(r["digest"]) for r in found if r["event"] == "final"}


def committed(root: Path) -> list[Path]:
    return sorted(root.glob("step-*"), key=lambda p: parse_step(p.name) or -1, reverse=True)


@pytest.mark.timeout(240)
def test_sharded_checkpoints_resume_bitwise_past_a_truncated_shard(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    torchrun(tmp_path, tmp_path / "base", "--steps", "30", "--ckpt-dir", str(tmp_path / "unused"))
    expected = final_digests(tmp_path / "base")
    assert len(expected) == 1  # the replicas agree

    train = ["--ckpt-dir", str(ckpt), "--every-s", "0.05", "--step-s", "0.02"]
    torchrun(tmp_path, tmp_path / "first", "--steps", "20", *train)
    newest, previous = committed(ckpt)[:2]
    for path in (newest, previous):
        manifest, _ = read_manifest(path)
        listed = {entry.path for entry in manifest.files}
        on_disk = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {
            "MANIFEST.json"
        }
        assert listed == on_disk  # one manifest covers every rank's files
        assert {METADATA_FILE, "__0_0.distcp", "__1_0.distcp"} <= listed
        assert {*rank_files(0), *rank_files(1)} <= listed
        assert manifest.meta["world_size"] == 2
        assert verify_checkpoint(path, VerifyLevel.FULL).intact

    # The whole checkpoint is as good as its worst shard.
    shard = newest / "__1_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    verdict = verify_checkpoint(newest, VerifyLevel.FULL)
    assert not verdict.intact and "__1_0.distcp" in verdict.reason

    torchrun(tmp_path, tmp_path / "second", "--steps", "30", *train, "--sync")  # sync saves
    starts = [r for rank in (0, 1) for r in records(tmp_path / "second" / f"rank-{rank}.jsonl")]
    assert {r["resumed_from"] for r in starts if r["event"] == "start"} == {previous.name}
    assert final_digests(tmp_path / "second") == expected
    assert (parse_step(committed(ckpt)[0].name) or 0) > (parse_step(previous.name) or 0)
    assert (ckpt / ".quarantine" / f"{newest.name}-corrupt").is_dir()

    # Another world size: one process loads the two ranks' shards.
    reference = tmp_path / "reference.pt"
    dcp_to_torch_save(previous, reference)
    saved: dict[str, Any] = torch.load(reference, weights_only=True)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with Checkpointer(model, optimizer, ckpt_dir=tmp_path / "alone", async_save=False) as alone:
        step = alone.restore(previous)
    assert step == parse_step(previous.name)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["model"][key]), key
    moments = [state["exp_avg"] for state in optimizer.state_dict()["state"].values()]
    assert moments and all(bool(m.abs().sum() > 0) for m in moments)


class FakeRanks:
    """Rank 0 of two on one file system, where the other rank chose `theirs`."""

    rank = 0
    world_size = 2

    def __init__(self, theirs: str | None) -> None:
        self.theirs = theirs

    def everyone(self, value: Any) -> list[Any]:
        return [value, self.theirs]

    def all(self, flag: bool) -> bool:
        return flag

    def any(self, *flags: bool) -> tuple[bool, ...]:
        return flags


def make_checkpoint(root: Path, step: int) -> Path:
    return CheckpointStore(root).save_bytes(step, {"a.bin": b"x" * step}).path


def test_ranks_that_chose_differently_resume_from_the_newest_intact_choice(
    tmp_path: Path,
) -> None:
    older, newer = make_checkpoint(tmp_path, 10), make_checkpoint(tmp_path, 20)
    ranks: Any = FakeRanks(str(older))
    assert agree_on_resume(ranks, newer) == newer
    assert agree_on_resume(ranks, older) == older  # the same choice everywhere: no vote
    ranks = FakeRanks(None)
    assert agree_on_resume(ranks, older) == older


def test_ranks_never_resume_from_a_choice_one_of_them_cannot_verify(tmp_path: Path) -> None:
    older, newer = make_checkpoint(tmp_path, 10), make_checkpoint(tmp_path, 20)
    (newer / "a.bin").write_bytes(b"short")
    ranks: Any = FakeRanks(str(older))
    assert agree_on_resume(ranks, newer) == older
    (older / "a.bin").unlink()
    with pytest.raises(CheckpointInvalid, match="shared by every node"):
        agree_on_resume(ranks, newer)
