"""The Checkpointer's own safetensors writer: files safetensors reads back exactly, hashed as
written, so a Checkpointer commit reads none of its files back."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import stalwart.checkpoint.seal as seal_module
from stalwart.checkpoint import CheckpointStore, VerifyLevel, verify_checkpoint
from stalwart.torch import Checkpointer, read_checkpoint
from stalwart.torch.safetensors_io import (
    GATHER_BYTES,
    header_bytes,
    tensor_bytes,
    write_safetensors,
)
from tests.torch.helpers import Setup, state_equal


def _tensors() -> dict[str, torch.Tensor]:
    big = GATHER_BYTES // 4 + 3  # written on its own, after small ones were gathered
    return {
        "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "bf16": torch.linspace(-2, 2, 7).to(torch.bfloat16),
        "f16": torch.tensor([1.5, -0.25], dtype=torch.float16),
        "f64": torch.tensor(3.25, dtype=torch.float64),  # 0-dim
        "i64": torch.tensor([2**40, -1]),
        "i32": torch.tensor([[7]], dtype=torch.int32),
        "i16": torch.tensor([-3], dtype=torch.int16),
        "i8": torch.tensor([-8, 8], dtype=torch.int8),
        "u8": torch.tensor([255, 0], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 5),
        "big": torch.randn(big),
        "after_big": torch.ones(2),
    }


def test_written_file_reads_back_exactly_with_safetensors(tmp_path: Path) -> None:
    tensors = _tensors()
    store = CheckpointStore(tmp_path / "ck")
    tx = store.begin(1)
    with tx.open_hashed("t.safetensors") as out:
        write_safetensors(out, tensors, {"format": "test/1"})
    committed = tx.commit()
    path = committed.path / "t.safetensors"
    loaded = safetensors.torch.load_file(path)
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
        assert torch.equal(loaded[key], tensor), key
    with safetensors.safe_open(path, "pt") as opened:
        assert opened.metadata() == {"format": "test/1"}
    assert len(header_bytes(tensors, {})) % 8 == 0
    assert verify_checkpoint(committed.path, VerifyLevel.FULL).intact


def test_rejects_what_it_cannot_write_from_memory() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        tensor_bytes(torch.ones(4, 4).t())
    with pytest.raises(ValueError, match="no safetensors name"):
        header_bytes({"c": torch.ones(2, dtype=torch.complex64)}, {})


def test_checkpointer_commit_reads_none_of_its_files_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_back: list[str] = []
    real = seal_module.file_digest

    def spy(path: Path, *args: object, **kwargs: object) -> tuple[str, int]:
        read_back.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(seal_module, "file_digest", spy)
    setup = Setup()
    with Checkpointer(
        setup.model,
        **setup.components(),
        store=CheckpointStore(tmp_path),
        environ={},
        save_signals=(),
        exit_signals=(),
    ) as ckpt:
        setup.train(2)
        at_save = {k: v.clone() for k, v in setup.model.state_dict().items()}
        ckpt.save(2)
        outcome = ckpt.wait()
    assert outcome is not None
    assert read_back == []
    loaded = read_checkpoint(tmp_path / "step-000000002")
    assert state_equal({k: loaded.model[k] for k in at_save}, at_save)
    assert verify_checkpoint(tmp_path / "step-000000002", VerifyLevel.FULL).intact
