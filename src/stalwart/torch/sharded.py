"""Sharded checkpoints: torch.distributed.checkpoint (DCP) shards, committed as one unit.

    step-000001234/
        MANIFEST.json                 written last, by rank 0; covers every file below
        .metadata                     DCP's index of the shards (rank 0)
        __0_0.distcp, __1_0.distcp    each rank's shards of the model and optimizer (DCP)
        ranks/rank-00000.safetensors  each rank's other tensors: RNG states, data position ...
        ranks/rank-00000.pt           their skeleton (read with torch.load(weights_only=True))

A save, on every rank at the same step: rank 0 opens the staging directory and tells the
others where it is; every rank writes its shards through DCP and its own state, then
fsyncs and hashes its own files; rank 0 gathers the lists, checks that they cover the
directory exactly, writes the manifest and commits. A shard that is missing, truncated or
altered fails verification of the whole checkpoint, like any other file in it.

Every collective runs on gloo groups of the Checkpointer's own: `steps` for the training
thread (when to save, where to resume), `saves` for the save being written in the
background. The training's own process group (NCCL on GPUs) is never used.
"""

from __future__ import annotations

import io
import logging
import pickle
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from stalwart.checkpoint import (
    CheckpointInvalid,
    CheckpointStore,
    CheckpointStoreError,
    CommitFailed,
    Committed,
    Defect,
    Transaction,
)
from stalwart.checkpoint.discovery import remove_leftovers
from stalwart.checkpoint.layout import checkpoint_name, parse_step
from stalwart.checkpoint.manifest import FileEntry
from stalwart.checkpoint.seal import seal
from stalwart.checkpoint.verify import quick_check, read_manifest
from stalwart.torch import rng
from stalwart.torch.errors import StateMismatch, UnsafeCheckpoint
from stalwart.torch.tree import flatten, unflatten

logger = logging.getLogger(__name__)

METADATA_FILE = ".metadata"
"""DCP's index of the shards; its presence marks a sharded checkpoint."""
RANKS_DIR = "ranks"
FORMAT_NAME = "stalwart.torch.sharded"
FORMAT = 1
DISCARDED = "the save was discarded on every rank; earlier checkpoints are intact"


def rank_files(rank: int) -> tuple[str, str]:
    """This rank's own state: (tensors, skeleton), relative to the checkpoint."""
    stem = f"{RANKS_DIR}/rank-{rank:05d}"
    return f"{stem}.safetensors", f"{stem}.pt"


def owned_by(rank: int) -> Callable[[str], bool]:
    """Which files of a sharded checkpoint `rank` wrote, and so seals."""
    shard_prefix = f"__{rank}_"
    own = set(rank_files(rank))

    def owned(relpath: str) -> bool:
        return (
            relpath.startswith(shard_prefix)
            or relpath in own
            or (rank == 0 and relpath == METADATA_FILE)
        )

    return owned


def is_sharded(path: Path) -> bool:
    return (path / METADATA_FILE).is_file()


class Ranks:
    """This process's place in the job and the gloo groups the Checkpointer talks over.

    Creating one is a collective: every rank must construct its Checkpointer together.
    """

    def __init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "a sharded Checkpointer needs torch.distributed: call "
                "init_process_group() first (torchrun sets the environment for it)"
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.steps = dist.new_group(backend="gloo")
        """The training thread's agreements: when to save, where to resume."""
        self.saves = dist.new_group(backend="gloo")
        """The save being written (in the background when asynchronous)."""
        self.stager = DefaultStager(
            StagingOptions(
                use_pinned_memory=torch.cuda.is_available(),
                use_shared_memory=False,
                use_async_staging=False,
                use_non_blocking_copy=False,
            )
        )
        """Copies the shards to memory for an asynchronous save, into buffers it keeps."""
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._settled: tuple[int, ...] | None = None

    def collect(self) -> tuple[int, ...] | None:
        """The values every rank posted last, each the maximum over ranks; None if nothing
        was posted since the last collect."""
        self.settle()
        values, self._settled = self._settled, None
        return values

    def post(self, *values: int) -> None:
        """Start reducing (max over ranks) these values in the background; `collect` them
        later, after the same number of posts on every rank."""
        self.settle()
        tensor = torch.tensor(values, dtype=torch.int64)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.steps, async_op=True)
        self._pending = (work, tensor)

    def settle(self) -> None:
        """Finish a reduction still in flight (before any other collective on `steps`); its
        values wait for `collect`."""
        if self._pending is not None:
            work, tensor = self._pending
            self._pending = None
            work.wait()
            self._settled = tuple(int(value) for value in tensor.tolist())

    def close(self) -> None:
        """Finish what is in flight and let go of the groups: they are then freed with the
        job's own, by destroy_process_group(), never later from this object's finalizer."""
        self.settle()
        self.stager.close()
        del self.steps, self.saves

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over all ranks (one small all-reduce)."""
        self.settle()
        tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.steps)
        return tuple(bool(value) for value in tensor.tolist())

    def all(self, flag: bool) -> bool:
        self.settle()
        tensor = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.steps)
        return bool(tensor.item())

    def from_rank0(self, value: Any, group: Any = None) -> Any:
        if group is None:
            self.settle()
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=group or self.steps)
        return box[0]

    def everyone(self, value: Any) -> list[Any]:
        self.settle()
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value, group=self.steps)
        return gathered


# saving


@dataclass(frozen=True)
class RankState:
    """One rank's state outside DCP, owned by the save (copied, or not mutated meanwhile)."""

    tensors: dict[str, torch.Tensor]
    skeleton: dict[str, Any]


def capture_rank_state(step: int, state: Mapping[str, Any], *, copy: bool) -> RankState:
    flat = flatten(dict(state))
    tensors = {
        key: tensor.detach().to("cpu", copy=True) if copy else tensor.detach().cpu()
        for key, tensor in flat.tensors.items()
    }
    skeleton = {"format_name": FORMAT_NAME, "format": FORMAT, "step": step, "state": flat.skeleton}
    return RankState({key: t.contiguous() for key, t in tensors.items()}, skeleton)


def dcp_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """The model's (and optimizer's) state as DCP sees it, sharded however the model is."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def open_staging(
    ranks: Ranks, store: CheckpointStore, step: int, meta: Mapping[str, Any]
) -> tuple[Path, Transaction | None]:
    """Rank 0 opens the save's staging directory; every rank learns where it is."""
    tx: Transaction | None = None
    reply: tuple[str | None, str | None]
    if ranks.rank == 0:
        try:
            tx = store.begin(step, meta=meta)
            reply = (str(tx.dir), None)
        except CheckpointStoreError as exc:
            reply = (None, str(exc))
    else:
        reply = (None, None)
    where, error = ranks.from_rank0(reply)
    if where is None:
        raise CommitFailed(checkpoint_name(step), None, f"rank 0: {error}", DISCARDED)
    return Path(where), tx


def write_rank_state(staging: Path, rank: int, state: RankState) -> None:
    tensors_file, skeleton_file = rank_files(rank)
    (staging / RANKS_DIR).mkdir(exist_ok=True)
    safetensors.torch.save_file(state.tensors, staging / tensors_file)
    buffer = io.BytesIO()
    torch.save(state.skeleton, buffer)
    (staging / skeleton_file).write_bytes(buffer.getbuffer())


@dataclass
class ShardedSave:
    """A sharded save begun on every rank; `complete` it on every rank (in the background
    when it is asynchronous)."""

    ranks: Ranks
    store: CheckpointStore
    step: int
    staging: Path
    tx: Transaction | None
    """Rank 0's transaction (the others have none)."""
    own: RankState
    group: Any
    pending: Future[Any] | None
    """DCP's asynchronous write, when in the background."""

    def complete(self) -> Committed:
        """Every rank seals its own files; rank 0 commits them all or, if any rank failed,
        discards the save on every rank."""
        ranks = self.ranks
        error: str | None = None
        if self.pending is not None:
            try:
                self.pending.result()
            except Exception as exc:
                error = f"rank {ranks.rank}: DCP save failed: {exc}"
        entries: tuple[FileEntry, ...] = ()
        if error is None:
            try:
                write_rank_state(self.staging, ranks.rank, self.own)
                store = self.store
                sealed = seal(
                    self.staging, store.hash_algo, store.ops, include=owned_by(ranks.rank)
                )
                entries = sealed.files
            except (OSError, ValueError) as exc:
                error = f"rank {ranks.rank}: {exc}"
        gathered: list[Any] = [None] * ranks.world_size
        dist.gather_object((entries, error), gathered if ranks.rank == 0 else None, 0, self.group)
        outcome: tuple[str | None, str | None] = (None, None)
        if self.tx is not None:
            outcome = _commit_gathered(self.tx, gathered)
        path, problem = ranks.from_rank0(outcome, self.group)
        name = checkpoint_name(self.step)
        if path is None:
            raise CommitFailed(name, None, str(problem), DISCARDED)
        manifest, _ = read_manifest(Path(path), name=name)
        return Committed(
            name=name, path=Path(path), step=self.step, manifest=manifest, persist_s=0.0
        )


def start_save(
    ranks: Ranks,
    store: CheckpointStore,
    step: int,
    *,
    meta: Mapping[str, Any],
    shards: dict[str, Any],
    own: RankState,
    background: bool,
) -> ShardedSave:
    """Begin a sharded save on every rank. With `background`, DCP copies the shards to
    memory before this returns and writes them in its own thread."""
    staging, tx = open_staging(ranks, store, step, meta)
    writer = FileSystemWriter(staging, sync_files=True)
    group = ranks.saves if background else ranks.steps
    pending: Future[Any] | None = None
    try:
        if background:
            started = dcp_async_save(
                shards, storage_writer=writer, process_group=group, async_stager=ranks.stager
            )
            assert isinstance(started, Future)
            pending = started
        else:
            dcp_save(shards, storage_writer=writer, process_group=group)
    except BaseException:
        if tx is not None:
            tx.abort()
        raise
    return ShardedSave(ranks, store, step, staging, tx, own, group, pending)


def _commit_gathered(tx: Transaction, gathered: list[Any]) -> tuple[str | None, str | None]:
    errors = [error for _, error in gathered if error is not None]
    files = [entry for entries, _ in gathered for entry in entries]
    if not errors and not any(entry.path == METADATA_FILE for entry in files):
        errors.append(f"DCP wrote no {METADATA_FILE}")
    if errors:
        tx.abort()
        return None, "; ".join(errors)
    try:
        committed = tx.commit_sealed(files)
    except CheckpointStoreError as exc:
        return None, str(exc)
    return str(committed.path), None


# resuming


def agree_on_resume(ranks: Ranks, candidate: Path | None) -> Path | None:
    """The checkpoint every rank resumes from: the same on all, or an error.

    Each node's supervisor chose the newest checkpoint that verified on its node; they
    agree unless a save committed between their choices. Then the newest choice that
    every rank can see intact (manifest and file sizes) wins.
    """
    choices = ranks.everyone(None if candidate is None else str(candidate))
    if len(set(choices)) == 1:
        return candidate
    options = sorted(
        {choice for choice in choices if choice is not None},
        key=lambda choice: parse_step(Path(choice).name) or -1,
        reverse=True,
    )
    for option in options:
        try:
            quick_check(Path(option))
            visible = True
        except CheckpointInvalid:
            visible = False
        if ranks.all(visible):
            if ranks.rank == 0:
                logger.warning(
                    "ranks chose different checkpoints to resume from (%s); all resume "
                    "from %s, the newest every rank sees intact",
                    ", ".join(sorted({str(c) for c in choices})),
                    option,
                )
            return Path(option)
    raise CheckpointInvalid(
        Path(options[0]).name,
        None,
        Defect.FILE_MISSING,
        f"the ranks chose {sorted({str(c) for c in choices})} and no choice is intact on "
        "every rank: is the checkpoint directory shared by every node?",
    )


def remove_unfinished_saves(ranks: Ranks, root: Path) -> None:
    """Rank 0 removes staging directories of saves that never committed, once every rank
    is resuming (so none is saving). Each node's supervisor leaves them alone: on a
    directory shared by nodes, a save in progress may be another node's."""
    if ranks.rank == 0 and root.is_dir():
        try:
            remove_leftovers(root, deleting=False)
        except OSError as exc:
            logger.warning("could not remove unfinished saves in %s: %s", root, exc)


def load_shards(
    path: Path,
    ranks: Ranks | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """Load model (and optimizer) through DCP, resharded onto this job's layout (any
    number of ranks, one included, as far as DCP can reshard the model's tensors)."""
    state = dcp_state(model, optimizer)
    if ranks is None:
        with warnings.catch_warnings():
            # DCP warns that it loads in one process even when asked to.
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp_load(state, checkpoint_id=path, no_dist=True)
    else:
        ranks.settle()
        dcp_load(state, checkpoint_id=path, process_group=ranks.steps)
    if optimizer is None:
        set_model_state_dict(model, state["model"])
        return
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def read_rank_state(path: Path, rank: int) -> tuple[int, dict[str, Any]]:
    """This rank's own state; rank 0's when the checkpoint had fewer ranks (logged)."""
    name = path.name
    tensors_file, skeleton_file = rank_files(rank)
    if not (path / skeleton_file).is_file():
        logger.warning(
            "%s has no state of rank %d (saved with fewer ranks): it takes rank 0's RNG and "
            "data position",
            name,
            rank,
        )
        tensors_file, skeleton_file = rank_files(0)
    try:
        document = torch.load(path / skeleton_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(name, skeleton_file, str(exc).splitlines()[0]) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointInvalid(name, skeleton_file, Defect.UNREADABLE, str(exc)) from None
    if not isinstance(document, dict) or document.get("format_name") != FORMAT_NAME:
        raise CheckpointInvalid(
            name, skeleton_file, Defect.FORMAT_INVALID, f"not a {FORMAT_NAME} skeleton"
        )
    step = document.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointInvalid(name, skeleton_file, Defect.FORMAT_INVALID, f"step {step!r}")
    try:
        tensors = safetensors.torch.load_file(path / tensors_file, device="cpu")
        state = unflatten(document["state"], tensors, where=tensors_file)
    except (KeyError, ValueError, OSError, SafetensorError) as exc:
        raise CheckpointInvalid(name, tensors_file, Defect.FORMAT_INVALID, str(exc)) from None
    if not isinstance(state, dict):
        raise CheckpointInvalid(name, skeleton_file, Defect.FORMAT_INVALID, "not a mapping")
    return step, state


def restore_all(
    source: Path, ranks: Ranks | None, rank: int, model: torch.nn.Module, components: Any
) -> int:
    """Load a sharded checkpoint into the model, the DCP optimizer and every other
    component of this rank; returns its step. Raises StateMismatch for missing state."""
    from stalwart.torch.strategies import dcp_optimizer

    optimizer = dcp_optimizer(components)
    load_shards(source, ranks, model, optimizer)
    step, state = read_rank_state(source, rank)
    wanted = [name for name, obj in components.items() if obj is not optimizer]
    absent = [name for name in (*wanted, "rng") if name not in state]
    if absent:
        problems = [f"{name}: not in the checkpoint" for name in absent]
        raise StateMismatch(source.name, components=problems)
    for name in wanted:
        components[name].load_state_dict(state[name])
    rng.restore(state["rng"])
    return step
