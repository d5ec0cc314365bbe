"""Real foreign checkpoints for the tests, written with torch and safetensors themselves."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from tests.checkpoint.helpers import import_torch


def torch_pt(path: Path, step: int = 5) -> Path:
    torch = import_torch()
    torch.save({"w": torch.arange(1000, dtype=torch.float32), "step": step}, path)
    return path


def lightning_ckpt(path: Path, step: int = 300) -> Path:
    torch = import_torch()
    state = {
        "epoch": 1,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"layer.weight": torch.ones(16, 16), "layer.bias": torch.zeros(16)},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        "lr_schedulers": [],
    }
    torch.save(state, path)
    return path


def safetensors_file(path: Path, tensors: dict[str, Any] | None = None) -> Path:
    """safetensors.torch.save_file needs numpy (not installed): use the raw serializer."""
    torch = import_torch()
    from safetensors import TensorSpec, serialize_file

    tensors = tensors or {
        "embed.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8),
        "norm.bias": torch.ones(8, dtype=torch.bfloat16),
    }
    specs = {
        name: TensorSpec(
            dtype=str(t.dtype).split(".")[-1],
            shape=list(t.shape),
            data_ptr=t.data_ptr(),
            data_len=t.nbytes,
        )
        for name, t in tensors.items()
    }
    serialize_file(specs, str(path), metadata={"format": "pt"})
    return path


def hf_checkpoint(path: Path, step: int = 500) -> Path:
    """A Hugging Face Trainer checkpoint directory, sharded weights and all."""
    torch = import_torch()
    path.mkdir(parents=True)
    safetensors_file(path / "model-00001-of-00002.safetensors", {"a": torch.ones(4)})
    safetensors_file(path / "model-00002-of-00002.safetensors", {"b": torch.zeros(4)})
    index = {
        "metadata": {"total_size": 32},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.save({"state": {}, "param_groups": [{"lr": 1e-3}]}, path / "optimizer.pt")
    torch.save({"last_epoch": 3}, path / "scheduler.pt")
    torch.save({"python": 1}, path / "rng_state.pth")
    (path / "config.json").write_text('{"model_type": "tiny"}')
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0}))
    return path


def dcp_dir(path: Path) -> Path:
    """A torch.distributed.checkpoint save (single process)."""
    torch = import_torch()
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(32.0), "b": torch.ones(4)}, "step": torch.tensor(7)}
    with warnings.catch_warnings():
        # "torch.distributed is ... uninitialized, assuming ... a single process": yes.
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(path))
    return path
