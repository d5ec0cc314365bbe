"""The files of a Checkpointer checkpoint, written into a store transaction and read back.

    step-000001234/
        MANIFEST.json          the store's commit marker (sizes and digests of the rest)
        model.safetensors      the model's state_dict under its own keys (tied tensors once)
        state.safetensors      every other tensor: optimizer moments, RNG states, ...
        state.pt               the skeleton: step, structure and small values, each tensor
                               replaced by a reference; read with torch.load(weights_only=True)

Tensors are never unpickled: safetensors holds only tensor bytes, and the skeleton is read
with torch's restricted unpickler, which refuses anything that would run code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from stalwart.checkpoint import CheckpointInvalid, Committed, Defect, Transaction
from stalwart.torch.errors import NotATorchCheckpoint, UnsafeCheckpoint
from stalwart.torch.safetensors_io import write_safetensors
from stalwart.torch.tree import unflatten

FORMAT = 1
FORMAT_NAME = "stalwart.torch"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
SKELETON_FILE = "state.pt"


@dataclass(frozen=True)
class SavePlan:
    """Everything a save writes, owned by the save (nothing training still mutates)."""

    step: int
    model_tensors: dict[str, torch.Tensor]
    state_tensors: dict[str, torch.Tensor]
    document: dict[str, Any]
    """The skeleton: format, step, model and state structures with tensor references."""
    ready: Callable[[], None]
    """Blocks until device-to-host copies into the tensors above are complete."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    state: dict[str, Any]


def _save_tensors(tx: Transaction, relpath: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write one safetensors file, hashed as it is written (the commit does not read it)."""
    metadata = {"format": f"{FORMAT_NAME}/{FORMAT}"}
    try:
        with tx.open_hashed(relpath) as out:
            write_safetensors(out, tensors, metadata)
    except OSError as exc:
        tx.abort()
        raise tx.store.commit_error(tx.name, relpath, exc) from exc


def write_checkpoint(tx: Transaction, plan: SavePlan) -> Committed:
    """Write the plan's files into the transaction and commit it; on failure nothing stays."""
    try:
        plan.ready()
        _save_tensors(tx, MODEL_FILE, plan.model_tensors)
        _save_tensors(tx, STATE_FILE, plan.state_tensors)
        skeleton = io.BytesIO()
        torch.save(plan.document, skeleton)
        tx.write_bytes(SKELETON_FILE, skeleton.getbuffer())
        return tx.commit()
    except BaseException:
        tx.abort()
        raise


def _load_tensors(path: Path, relpath: str, device: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path / relpath, device=device)
    except (SafetensorError, OSError) as exc:
        raise CheckpointInvalid(path.name, relpath, Defect.UNREADABLE, str(exc)) from None


def _refused_global(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "global" in line:
            return line.strip()
    return "an object it does not allow"


def read_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint's state onto `map_location` (by default the CPU, whatever device it
    was saved from). Raises UnsafeCheckpoint for pickled code, CheckpointInvalid for
    unreadable files, NotATorchCheckpoint for another format."""
    name = path.name
    if not (path / SKELETON_FILE).is_file():
        raise NotATorchCheckpoint(name, f"no {SKELETON_FILE} in {path}")
    device = str(torch.device(map_location))
    try:
        document = torch.load(path / SKELETON_FILE, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(name, SKELETON_FILE, _refused_global(str(exc))) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointInvalid(name, SKELETON_FILE, Defect.UNREADABLE, str(exc)) from None
    if not isinstance(document, dict) or document.get("format_name") != FORMAT_NAME:
        raise NotATorchCheckpoint(name, f"{SKELETON_FILE} is not a {FORMAT_NAME} skeleton")
    if document.get("format") != FORMAT:
        raise NotATorchCheckpoint(
            name, f"format {document.get('format')!r}; this version reads format {FORMAT}"
        )
    step = document.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointInvalid(name, SKELETON_FILE, Defect.FORMAT_INVALID, f"step {step!r}")
    try:
        model = unflatten(
            document["model"], _load_tensors(path, MODEL_FILE, device), where=MODEL_FILE
        )
        state = unflatten(
            document["state"], _load_tensors(path, STATE_FILE, device), where=STATE_FILE
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointInvalid(name, SKELETON_FILE, Defect.FORMAT_INVALID, str(exc)) from None
    if not isinstance(model, dict) or not isinstance(state, dict):
        raise CheckpointInvalid(
            name, SKELETON_FILE, Defect.FORMAT_INVALID, "model or state is not a mapping"
        )
    return LoadedCheckpoint(path=path, step=step, model=model, state=state)
