"""Save strategies: how the Checkpointer's saves are decided, written and resumed from.

    LocalSaves    one process: it decides alone at every step and writes the whole state
                  as one stalwart.torch checkpoint (files.py).
    ShardedSaves  every rank of a torch.distributed job: the ranks agree when to save, when
                  to leave and where to resume; each writes its shards through DCP and rank
                  0 commits them as one checkpoint (sharded.py).

The Checkpointer holds one and leaves everything that depends on the number of processes
to it; what it does itself (snapshot timing, reports, restore checks) is the same for both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from stalwart.checkpoint import CheckpointStore, Committed, Transaction
from stalwart.client import Client
from stalwart.torch import rng
from stalwart.torch import sharded as sharded_mod
from stalwart.torch.files import FORMAT, FORMAT_NAME, SavePlan, write_checkpoint
from stalwart.torch.memory_tier import Commits, abort_all, write_tiers
from stalwart.torch.overlap import OverlappedCopy
from stalwart.torch.signals import SignalRequests
from stalwart.torch.tree import SnapshotBuffers, copy_into, flatten, for_direct_write

if TYPE_CHECKING:
    from stalwart.torch.checkpointer import Stateful

AGREE_EVERY_S = 0.1
"""Sharded: how often (in training time) the ranks agree on whether to save or leave."""
MAX_STRIDE = 1000

logger = logging.getLogger(__name__)


class Host(Protocol):
    """The Checkpointer, as its save strategy sees it."""

    model: torch.nn.Module
    components: dict[str, Stateful]
    store: CheckpointStore
    client: Client
    _signals: SignalRequests
    _retake: bool
    """A torn snapshot was discarded: save again at the next step, copying at once."""
    _clock: Callable[[], float]
    async_save: bool

    def save(self, step: int, *, wait: bool = False) -> bool: ...

    def _save_due(self, step: int) -> bool:
        """A save the intervals asked for (to the memory tier alone unless disk is due)."""

    def _drain(self, step: int) -> None:
        """Save synchronously (unless this step is saved already), then leave."""

    def _leaving(self) -> bool:
        """An exit signal or the supervisor's drain asks this process to leave."""

    def _due_now(self, step: int) -> bool:
        """No save is being written and one is due (interval, supervisor's advice)."""


class SaveStrategy(Protocol):
    """Where the single-process and the sharded Checkpointer differ."""

    @property
    def ranks(self) -> sharded_mod.Ranks | None:
        """The job's ranks (loading a sharded checkpoint with them); None: one process."""

    @property
    def rank(self) -> int:
        """This process's rank (0 alone)."""

    @property
    def reports_costs(self) -> bool:
        """This process reports each save's costs to its supervisor."""

    def step_end(self, host: Host, step: int) -> bool:
        """Save or drain when due; True: drained, leave the loop."""

    def any_busy(self, busy: bool) -> bool:
        """Whether the previous save is still being written here (or on any rank)."""

    def begin(
        self,
        host: Host,
        step: int,
        *,
        background: bool,
        overlap: bool,
        memory: CheckpointStore | None = None,
        durable: bool = True,
    ) -> Callable[[], Committed | Commits]:
        """Start a save of the state as of `step` (snapshot it when in the `background`,
        parameters and optimizer state in the background too with `overlap`); the function
        returned completes it and returns the committed checkpoint (or, with a `memory`
        tier, what each tier committed; `durable` False: the memory tier alone)."""

    def settle(self, *, block: bool) -> bool:
        """Training thread: finish the overlapped copy in flight where the state would
        change under it (waiting for it if `block`, or when no optimizer step waits).
        True: the save in flight is void (a tensor changed during its copy)."""

    def resume_from(self, host: Host, source: Path | None) -> Path | None:
        """The checkpoint this process resumes from, given the one it found itself."""

    def close(self) -> None: ...


def dcp_optimizer(components: Mapping[str, Stateful]) -> torch.optim.Optimizer | None:
    """The optimizer DCP saves with the model (sharded like it); None: none, or not a
    torch optimizer (then it is saved with each rank's own state)."""
    optimizer = components.get("optimizer")
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


class LocalSaves:
    """One process: decides alone, writes the whole state into one checkpoint.

    An overlapped save copies buffers, RNG states and every other small state at once, and
    leaves the parameters and the optimizers' state to the save's thread; a step pre-hook
    on each optimizer (or, with none, the next `step_end`) waits for that copy.
    """

    ranks: sharded_mod.Ranks | None = None
    rank = 0
    reports_costs = True

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
        self._model_buffers = SnapshotBuffers()
        self._state_buffers = SnapshotBuffers()
        self._optimizers = dict(optimizers or {})
        """The torch optimizers among the components, by name: their state is overlapped."""
        self._pending: OverlappedCopy | None = None
        self._void = False
        """The newest overlapped copy was torn: its save ends without writing."""
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step)
            for optimizer in self._optimizers.values()
        ]
        self._prefaulting: threading.Thread | None = None
        """Allocates and touches the snapshot buffers after the first step (see step_end)."""
        self._prepared = False

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.settle(block=True)

    def settle(self, *, block: bool) -> bool:
        pending = self._pending
        if pending is not None and pending.settle(block=block or not self._hooks):
            self._pending = None
            self._void = pending.torn
        return self._void

    @property
    def buffer_bytes(self) -> int:
        """Memory held by the snapshot buffers (one snapshot of the state)."""
        return self._model_buffers.nbytes + self._state_buffers.nbytes

    @property
    def buffer_allocations(self) -> int:
        return self._model_buffers.allocations + self._state_buffers.allocations

    def _prepare(self, host: Host) -> None:
        """At the first step_end of an asynchronous Checkpointer: allocate the snapshot
        buffers for the state as it is now, and touch their pages in a thread of their own,
        so that the first save costs what the later ones do (fresh pages fault on first
        touch, several times the copy). The first save waits for it (`begin`)."""
        self._prepared = True
        if not host.async_save:
            return
        state = {name: obj.state_dict() for name, obj in host.components.items()}
        self._model_buffers.targets(flatten(host.model.state_dict()).tensors)
        self._state_buffers.targets(flatten({**state, "rng": rng.capture()}).tensors)

        def touch() -> None:
            self._model_buffers.prefault()
            self._state_buffers.prefault()

        self._prefaulting = threading.Thread(target=touch, name="stalwart-prefault", daemon=True)
        self._prefaulting.start()

    def _prefaulted(self) -> None:
        if self._prefaulting is not None:
            self._prefaulting.join()
            self._prefaulting = None

    def step_end(self, host: Host, step: int) -> bool:
        if not self._prepared:
            self._prepare(host)
        if host._leaving():
            host._drain(step)
            return True
        if host._signals.take_save_request():
            host.save(step)  # asked for: durable
        elif host._retake or host._due_now(step):
            host._save_due(step)  # the intervals: memory alone unless the disk's is due
        return False

    def any_busy(self, busy: bool) -> bool:
        return busy

    def begin(
        self,
        host: Host,
        step: int,
        *,
        background: bool,
        overlap: bool,
        memory: CheckpointStore | None = None,
        durable: bool = True,
    ) -> Callable[[], Committed | Commits]:
        self.settle(block=True)  # the previous copy is done (its save was collected)
        self._prefaulted()  # nothing writes into the buffers while this save copies
        self._void = False
        meta = {"format": f"{FORMAT_NAME}/{FORMAT}"}
        txs: list[tuple[str, Transaction]] = []
        try:
            if memory is not None:
                txs.append(("memory", memory.begin(step, meta=meta)))
            if durable or memory is None:
                txs.append(("disk", host.store.begin(step, meta=meta)))
            plan, copy = self._plan(host, step, copy=background, overlap=overlap)
        except BaseException:
            abort_all(txs)
            raise
        host.client.checkpoint_begin(step)

        def write_all() -> Committed | Commits:
            if memory is None:
                return write_checkpoint(txs[0][1], plan)
            return write_tiers(txs, lambda tx: write_checkpoint(tx, plan), host._clock)

        if copy is None:
            return write_all
        self._pending = copy

        def complete() -> Committed | Commits:
            try:
                copy.run()
            except BaseException:
                abort_all(txs)
                raise
            return write_all()

        return complete

    def _plan(
        self, host: Host, step: int, *, copy: bool, overlap: bool
    ) -> tuple[SavePlan, OverlappedCopy | None]:
        model_flat = flatten(host.model.state_dict())
        state = {name: obj.state_dict() for name, obj in host.components.items()}
        state["rng"] = rng.capture()
        state_flat = flatten(state)
        events: list[Any] = []
        overlapped: OverlappedCopy | None = None
        if copy and overlap:
            model_tensors = self._model_buffers.targets(model_flat.tensors)
            state_tensors = self._state_buffers.targets(state_flat.tensors)
            later = self._deferred(host.model.parameters(), model_flat.tensors, model_tensors)
            later += self._deferred_state(state_flat.tensors, state_tensors)
            deferred = {key for key, _, _ in later}
            devices: set[torch.device] = set()
            with torch.no_grad():
                for prefix, flat, targets in (
                    ("model", model_flat.tensors, model_tensors),
                    ("state", state_flat.tensors, state_tensors),
                ):
                    for key, tensor in flat.items():
                        # `later` names its tensors "model/<key>" and "state/<key>".
                        if f"{prefix}/{key}" not in deferred:
                            copy_into(targets[key], tensor)
                            if tensor.is_cuda:
                                devices.add(tensor.device)
            for device in devices:
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(torch.cuda.current_stream(device))
                events.append(event)
            overlapped = OverlappedCopy(step, later)
        elif copy:
            model_tensors, model_events = self._model_buffers.copy(model_flat.tensors)
            state_tensors, state_events = self._state_buffers.copy(state_flat.tensors)
            events = model_events + state_events
        else:
            model_tensors = for_direct_write(model_flat.tensors)
            state_tensors = for_direct_write(state_flat.tensors)
        document = {
            "format_name": FORMAT_NAME,
            "format": FORMAT,
            "step": step,
            "model": model_flat.skeleton,
            "state": state_flat.skeleton,
        }

        def ready() -> None:
            if overlapped is not None:
                overlapped.ready()
            for event in events:
                event.synchronize()

        return SavePlan(step, model_tensors, state_tensors, document, ready), overlapped

    @staticmethod
    def _deferred(
        parameters: Iterable[torch.Tensor],
        tensors: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The model's tensors that only an optimizer step changes: its parameters (buffers
        such as BatchNorm statistics change in the forward, and are copied at once)."""
        owned = {(p.device, p.untyped_storage().data_ptr()) for p in parameters if p.numel()}
        return [
            (f"model/{key}", tensor, targets[key])
            for key, tensor in tensors.items()
            if tensor.numel() and (tensor.device, tensor.untyped_storage().data_ptr()) in owned
        ]

    def _deferred_state(
        self, tensors: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The torch optimizers' state (moments, step counts): their step pre-hook waits."""
        if not self._hooks:
            return []
        return [
            (f"state/{key}", tensor, targets[key])
            for key, tensor in tensors.items()
            if key.split("/", 1)[0] in self._optimizers
        ]

    def resume_from(self, host: Host, source: Path | None) -> Path | None:
        return source

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._prefaulted()
        self._pending = None
        self._model_buffers.clear()
        self._state_buffers.clear()


class ShardedSaves:
    """Every rank: the ranks agree, each writes its shards, rank 0 commits them."""

    reports_costs: bool

    def __init__(
        self, ranks: sharded_mod.Ranks, *, local_rank: int, clock: Callable[[], float]
    ) -> None:
        self._ranks = ranks
        self.reports_costs = local_rank == 0
        """One rank per node reports the costs, so its supervisor records the save once."""
        self._clock = clock
        self._until_agreement = 1
        """Steps until the ranks next agree on saving and leaving."""
        self._asked = False
        self._step_s: float | None = None
        self._last_step_s: float | None = None

    @property
    def ranks(self) -> sharded_mod.Ranks:
        return self._ranks

    @property
    def rank(self) -> int:
        return self._ranks.rank

    def step_end(self, host: Host, step: int) -> bool:
        """Every `stride` steps, the ranks do what any of them asked for at the previous
        agreement, then post what each wants now (after acting, so a save is never asked
        twice). The reduction runs in the background meanwhile: its latency hides behind
        training, and the stride keeps its cost small against short steps."""
        now_s = self._clock()
        if self._last_step_s is not None:
            gap_s = now_s - self._last_step_s
            self._step_s = gap_s if self._step_s is None else 0.9 * self._step_s + 0.1 * gap_s
        self._last_step_s = now_s
        self._asked = host._signals.take_save_request() or self._asked
        self._until_agreement -= 1
        if self._until_agreement > 0:
            return False
        agreed = self._ranks.collect()
        leave, due, stride = agreed if agreed is not None else (0, 0, 1)
        self._until_agreement = stride
        if leave:
            host._drain(step)
            return True
        if due:
            host.save(step)
        wants_out = host._leaving()
        wants_save = self._asked or host._due_now(step)
        self._asked = False
        self._ranks.post(int(wants_out), int(wants_save), self._stride())
        return False

    def _stride(self) -> int:
        """Steps between agreements: about AGREE_EVERY_S of training, at least one step."""
        if self._step_s is None or self._step_s <= 0:
            return 1
        return max(1, min(MAX_STRIDE, int(AGREE_EVERY_S / self._step_s)))

    def any_busy(self, busy: bool) -> bool:
        (busy,) = self._ranks.any(busy)
        return busy

    def begin(
        self,
        host: Host,
        step: int,
        *,
        background: bool,
        overlap: bool,
        memory: CheckpointStore | None = None,
        durable: bool = True,
    ) -> Callable[[], Committed | Commits]:
        """The memory tier is not kept for sharded saves: `memory` is never given here."""
        shards = sharded_mod.dcp_state(host.model, dcp_optimizer(host.components))
        own = sharded_mod.capture_rank_state(step, self._rank_state(host), copy=background)
        host.client.checkpoint_begin(step)
        meta = {
            "format": f"{sharded_mod.FORMAT_NAME}/{sharded_mod.FORMAT}",
            "world_size": self._ranks.world_size,
        }
        save = sharded_mod.start_save(
            self._ranks, host.store, step, meta=meta, shards=shards, own=own, background=background
        )
        return save.complete

    @staticmethod
    def _rank_state(host: Host) -> dict[str, Any]:
        """What a sharded save keeps per rank: everything but the model and DCP's optimizer."""
        optimizer = dcp_optimizer(host.components)
        state = {
            name: obj.state_dict() for name, obj in host.components.items() if obj is not optimizer
        }
        state["rng"] = rng.capture()
        return state

    def settle(self, *, block: bool) -> bool:
        """Sharded saves copy everything before returning: nothing to settle."""
        return False

    def resume_from(self, host: Host, source: Path | None) -> Path | None:
        if host.client.supervised:
            source = sharded_mod.agree_on_resume(self._ranks, source)
            sharded_mod.remove_unfinished_saves(self._ranks, host.store.root)
            return source
        chosen = self._ranks.from_rank0(None if source is None else str(source))
        return None if chosen is None else Path(chosen)

    def close(self) -> None:
        self._ranks.close()
