"""Checkpointer: the complete training state, saved asynchronously when the supervisor
advises, restored bitwise.

    ckpt = Checkpointer(model, optimizer, scheduler, data=sampler)
    with ckpt:
        step = ckpt.restore()              # STALWART_RESUME_FROM, or the newest intact one
        while step < total_steps:
            train_one_batch()
            step += 1
            if ckpt.step_end(step):        # heartbeat; save when due; True: saved, now exit
                break

A save snapshots the state to CPU memory, then writes and commits it through the
checkpoint store in a background thread. The snapshot overlaps training: the small state is
copied at once, parameters and optimizer state while the next forward and backward run,
and training waits only at the next optimizer step (or `step_end`) if that copy is not done
yet (overlap.py). At most one save is in flight; its failure is raised at the next call.
With the supervisor's memory tier, saves go to memory first, to disk on its own interval.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.distributed as dist

from stalwart.checkpoint import (
    CheckpointStore,
    Committed,
    VerifyLevel,
    prepare_resume,
    verify_checkpoint,
)
from stalwart.client import Client
from stalwart.torch import rng
from stalwart.torch import sharded as sharded_mod
from stalwart.torch.background import Background
from stalwart.torch.divergence import skip_ahead
from stalwart.torch.files import LoadedCheckpoint, read_checkpoint
from stalwart.torch.fit import state_mismatch
from stalwart.torch.memory_tier import Commits, MemoryTier
from stalwart.torch.outcome import Busy, SaveOutcome, resolve_store
from stalwart.torch.overlap import TornSnapshot
from stalwart.torch.signals import SignalRequests
from stalwart.torch.strategies import LocalSaves, SaveStrategy, ShardedSaves

logger = logging.getLogger(__name__)


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state round-trips through a state dict (optimizers, schedulers, ...)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


class Checkpointer:
    """Saves and restores model, optimizer, scheduler, GradScaler, data position, RNGs.

    Under `stalwart run` it checkpoints into STALWART_CKPT_DIR at the interval the
    supervisor advises, resumes from STALWART_RESUME_FROM and reports every save's costs.
    Standalone it checkpoints into `ckpt_dir` every `interval_s` and resumes from the newest
    intact checkpoint there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        scaler: Stateful | None = None,
        data: Stateful | None = None,
        *,
        extra: Mapping[str, Stateful] | None = None,
        store: CheckpointStore | None = None,
        client: Client | None = None,
        ckpt_dir: str | os.PathLike[str] | None = None,
        async_save: bool = True,
        busy: Busy | Literal["wait", "skip"] = Busy.WAIT,
        snapshot: Literal["overlap", "block"] = "overlap",
        interval_s: float | None = None,
        save_signals: Iterable[int] = (signal.SIGUSR1,),
        exit_signals: Iterable[int] = (signal.SIGTERM,),
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        sharded: bool | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        memory_tier: bool = True,
    ) -> None:
        """
        model, optimizer, scheduler, scaler, data: what is saved; any but the model may be
            None. `data` is the data position (e.g. a ResumableSampler).
        extra: more objects with state_dict()/load_state_dict(), by name.
        store, ckpt_dir: where to save; default the supervisor's STALWART_CKPT_DIR, else
            `ckpt_dir`.
        client: the supervisor client (heartbeats, advice, reports); default a new one.
        async_save: snapshot to CPU memory and write in the background (False: write while
            training waits).
        busy: a save asked for while the previous one is still being written waits for it
            ("wait") or is skipped ("skip"). An interval save is never requested meanwhile.
        snapshot: how an asynchronous save copies the state. "overlap": the small state
            (buffers, RNGs, scheduler, scaler, data position, `extra`) at once, parameters
            and the optimizers' state in the background while training goes on; a step
            pre-hook on each torch optimizer among the components (with none: the next
            `step_end`) waits for that copy. A tensor changed in place meanwhile (an EMA
            update, a manual edit) voids that save, which is retaken at the next step
            with everything copied at once (logged, counted in `torn_snapshots`).
            "block": copy everything before returning. Buffers are kept between saves:
            memory for one snapshot of the state.
        interval_s: standalone only, save this often (default the client's 1800 s); under
            the supervisor its advice decides.
        save_signals: signals that ask for a checkpoint at the next step (SIGUSR1).
        exit_signals: signals that ask for a save and a clean exit (SIGTERM).
        map_location: where restored tensors are loaded first; they then go to the device
            of the parameter they are loaded into.
        strict: restore refuses model keys missing from, or unexpected in, the checkpoint.
        sharded: save the model and optimizer with torch.distributed.checkpoint, each rank
            its shards, committed as one checkpoint (default: when torch.distributed is
            initialized with more than one rank). Every rank then calls every method at
            the same step; the ranks agree when to save, when to exit and where to resume.
        memory_tier: use the supervisor's memory tier, if it keeps one (memory_tier.py).
        """
        env = os.environ if environ is None else environ
        self.model = model
        self.components: dict[str, Stateful] = {}
        for name, component in (
            ("optimizer", optimizer),
            ("scheduler", scheduler),
            ("scaler", scaler),
            ("data", data),
        ):
            if component is not None:
                self.components[name] = component
        for name, component in (extra or {}).items():
            if name in self.components or name == "rng":
                raise ValueError(f"extra state {name!r}: the name is taken")
            self.components[name] = component
        for name, component in self.components.items():
            if not isinstance(component, Stateful):
                raise TypeError(f"{name}: has no state_dict()/load_state_dict()")
        if sharded is None:
            sharded = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ranks = sharded_mod.Ranks() if sharded else None
        local_rank = int(env.get("LOCAL_RANK", "0") or 0)
        self.store = resolve_store(store, ckpt_dir, env)
        self._owns_client = client is None
        self.client = client if client is not None else Client(env)
        self.store.annotate = self.client.loss_meta  # the latest loss in each manifest
        self.memory: MemoryTier | None = None
        """The memory tier this process writes, if the supervisor keeps one."""
        if memory_tier and ranks is None:
            self.memory = MemoryTier.of(self.client, env)
        self.async_save = async_save
        self.busy = Busy(busy)
        if snapshot not in ("overlap", "block"):
            raise ValueError(f"snapshot={snapshot!r}: use 'overlap' or 'block'")
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.map_location = map_location
        self.strict = strict
        self._clock = clock
        self._signals = SignalRequests(save_signals, exit_signals)
        self._background: Background[SaveOutcome] = Background("stalwart-checkpoint")
        optimizers = {
            name: obj
            for name, obj in self.components.items()
            if isinstance(obj, torch.optim.Optimizer)
        }
        self._saves: SaveStrategy = (
            LocalSaves(optimizers)
            if ranks is None
            else ShardedSaves(ranks, local_rank=local_rank, clock=clock)
        )
        """Where one process and the ranks of a sharded job differ."""
        self._requested_step: int | None = None
        """The step of the newest save started (or restored); a failed save resets it."""
        self._requested_durable = True  # that save goes to disk, not to memory alone
        self._durable_step: int | None = None
        self._last_durable_s = clock()
        self._exiting = False
        self._closed = False
        self._retake = False
        self.torn_snapshots = 0
        """Overlapped saves discarded because a tensor changed in place during the copy."""
        self.last_saved: SaveOutcome | None = None
        """The newest save that became durable in this process."""
        self.last_in_memory: SaveOutcome | None = None  # the newest in the memory tier
        self.restored_from: Path | None = None
        """The checkpoint `restore` loaded, if any."""

    # saving

    @property
    def should_exit(self) -> bool:
        """True once a drain or exit signal was served: the state is durable, leave the loop."""
        return self._exiting

    @property
    def saving(self) -> bool:
        """A save is being written in the background."""
        return self._background.running

    def step_end(self, step: int, loss: Any = None) -> bool:
        """Call once per step, after the optimizer step; `step` counts the steps done.

        Heartbeats (`loss`: a float or 0-d tensor, watched for NaN and spikes); raises a
        background save's failure; saves when the advice (interval, `stalwart checkpoint`) or a
        save signal asks; on drain or an exit signal saves, waits until durable, returns True.
        """
        if self._exiting:
            return True
        self._collect(wait=False)
        self.client.step(step, loss)
        return self._saves.step_end(self, step)

    def _leaving(self) -> bool:
        """An exit signal or the supervisor's drain asks this process to leave."""
        return self._signals.exit_signal is not None or self.client.drain

    def _due_now(self, step: int) -> bool:
        """No save is being written and one is due (interval, supervisor's advice)."""
        return not self._background.pending and self._due(step)

    def _due(self, step: int) -> bool:
        if self.interval_s is not None and not self.client.supervised:
            return self._clock() - self._last_durable_s >= self.interval_s
        return self.client.should_checkpoint(step)

    def _drain(self, step: int) -> None:
        why = (
            signal.Signals(self._signals.exit_signal).name
            if self._signals.exit_signal is not None
            else "drain requested by the supervisor"
            if self.client.drain
            else "another rank is leaving"
        )
        logger.info("%s at step %d: saving, then exiting", why, step)
        self._collect(wait=True)
        if self._requested_step != step or not self._requested_durable:
            self.save(step, wait=True)
        self._exiting = True
        if self._signals.exit_signal is None and not self.client.drain:
            # This node's supervisor did not ask for it: it relaunches the job to rejoin the
            # others, instead of taking the exit for the end of training.
            self.client.send(PEER_DRAIN=1)

    def save(self, step: int, *, wait: bool = False) -> bool:
        """Save the state as of `step` now, to the durable tier (and the memory tier, if
        kept); False if skipped (`busy="skip"`, or `step` was saved already). With `wait`
        (or `async_save=False`) it returns once durable."""
        return self._save(step, wait=wait, durable=True)

    def _stateful(self) -> list[Any]:
        return [self.model, *self.components.values()]

    def _save_due(self, step: int) -> bool:
        """A save the intervals asked for: to memory alone unless the durable one is due."""
        durable = self.memory is None or (
            self.client.durable_due()
            if self.client.supervised
            else self._due(step)  # standalone: interval_s
        )
        return self._save(step, wait=False, durable=durable)

    def _save(self, step: int, *, wait: bool, durable: bool) -> bool:
        started_s = self._clock()
        self._collect(wait=False)
        if step == self._requested_step and (self._requested_durable or not durable):
            if wait:
                self._collect(wait=True)
            return False
        if self._saves.any_busy(self._background.pending):
            if self.busy is Busy.SKIP and not wait:
                logger.info(
                    "checkpoint of step %d skipped: step %s is still being written",
                    step,
                    self._requested_step,
                )
                return False
            self._collect(wait=True)
        in_background = self.async_save and not wait
        overlap = self.snapshot == "overlap" and not self._retake
        # A step the memory tier has already (saved there alone) now goes to disk only.
        memory = self._memory_store() if step != self._requested_step else None
        durable = durable or memory is None
        complete = self._saves.begin(
            self, step, background=in_background, overlap=overlap, memory=memory, durable=durable
        )
        self._retake = False
        self._requested_durable = durable
        if in_background:
            stall_s = self._clock() - started_s
            self._background.start(lambda: self._outcome(step, complete, started_s, stall_s))
            self._requested_step = step
        else:
            self._report(self._outcome(step, complete, started_s, None))
        return True

    def _memory_store(self) -> CheckpointStore | None:
        """The memory tier's store for this save, if kept and the snapshot fits."""
        if self.memory is None or not self.memory.admits(self._saves, self._stateful()):
            self.client.memory_tier = False
            return None
        return self.memory.store

    def _outcome(
        self,
        step: int,
        complete: Callable[[], Committed | Commits],
        started_s: float,
        stall_s: float | None,
    ) -> SaveOutcome:
        done = complete()
        commits = done if isinstance(done, Commits) else Commits(disk=done, memory=None)
        persist_s = self._clock() - started_s
        memory_persist_s = (
            commits.memory_done_s - started_s if commits.memory_done_s is not None else None
        )
        committed = commits.disk or commits.memory
        assert committed is not None
        return SaveOutcome(
            step=step,
            committed=committed,
            stall_s=persist_s if stall_s is None else stall_s,
            persist_s=persist_s if commits.disk is not None else (memory_persist_s or persist_s),
            tier="disk" if commits.disk is not None else "memory",
            memory=commits.memory,
            memory_persist_s=memory_persist_s,
        )

    def _report(self, outcome: SaveOutcome) -> None:
        # Every rank restarts its interval clock; one rank per node reports the costs, so
        # its supervisor records the save once.
        reports = self._saves.reports_costs
        self._requested_step = outcome.step
        if outcome.memory is not None:
            self.last_in_memory = outcome
            self.client.saved(
                outcome.step,
                stall_s=outcome.stall_s if reports else None,
                persist_s=outcome.memory_persist_s,
                size_bytes=outcome.memory.manifest.total_bytes,
                path=outcome.memory.path,
                tier="memory",
            )
            logger.debug("checkpoint %s in the memory tier", outcome.memory.name)
        if outcome.tier == "memory":
            return
        self.last_saved = outcome
        self._durable_step = outcome.step
        self._last_durable_s = self._clock()
        self.client.saved(
            outcome.step,
            stall_s=outcome.stall_s if reports else None,
            persist_s=outcome.persist_s,
            size_bytes=outcome.size_bytes,
            path=outcome.path,
        )
        logger.info(
            "checkpoint %s durable: %d bytes, training blocked %.3f s, durable after %.3f s",
            outcome.committed.name,
            outcome.size_bytes,
            outcome.stall_s,
            outcome.persist_s,
        )

    def _collect(self, *, wait: bool) -> None:
        void = self._saves.settle(block=wait)
        try:
            # A void save ends at once, without writing: collect it now, so that this very
            # step_end retakes the snapshot.
            outcome = self._background.collect(wait=wait or void)
        except TornSnapshot as torn:
            self._requested_step = self._durable_step
            self.torn_snapshots += 1
            self._retake = True
            logger.warning("%s (torn snapshots so far: %d)", torn, self.torn_snapshots)
            return
        except BaseException:
            self._requested_step = self._durable_step  # that step may be saved again
            raise
        if outcome is not None:
            self._report(outcome)

    def wait(self) -> SaveOutcome | None:
        """Block until the save in flight (if any) is durable; raises its failure."""
        self._collect(wait=True)
        return self.last_saved

    # restoring

    def restore(self, path: str | os.PathLike[str] | None = None) -> int:
        """Load the newest state; returns its step (the steps already done), 0 if none.

        From `path` (verified first), else STALWART_RESUME_FROM, else (standalone) the
        newest intact checkpoint in the checkpoint directory. The model's keys and shapes,
        the components' presence and the optimizer's parameter groups are checked before
        anything is loaded (StateMismatch lists what differs).
        """
        self._collect(wait=True)
        source = self._saves.resume_from(self, self._source(path))
        if source is None:
            return skip_ahead(self.components.get("data"), self.client, 0)
        if sharded_mod.is_sharded(source):
            return self._restore_sharded(source)
        loaded = read_checkpoint(source, map_location=self.map_location)
        self._check(loaded)
        self.model.load_state_dict(loaded.model, strict=self.strict)
        for name, component in self.components.items():
            component.load_state_dict(loaded.state[name])
        rng.restore(loaded.state["rng"])
        self._requested_step = self._durable_step = loaded.step
        self.restored_from = source
        logger.info("restored step %d from %s", loaded.step, source)
        return skip_ahead(self.components.get("data"), self.client, loaded.step)

    def _restore_sharded(self, source: Path) -> int:
        step = sharded_mod.restore_all(
            source, self._saves.ranks, self._saves.rank, self.model, self.components
        )
        self._requested_step = self._durable_step = step
        self.restored_from = source
        logger.info("restored step %d from %s (sharded)", step, source)
        return skip_ahead(self.components.get("data"), self.client, step)

    def _source(self, path: str | os.PathLike[str] | None) -> Path | None:
        if path is not None:
            chosen = Path(path)
            verdict = verify_checkpoint(chosen, VerifyLevel.FULL)
            if verdict.problem is not None:
                raise verdict.problem
            return chosen
        if self.client.resume_from:
            return Path(self.client.resume_from)  # verified by the supervisor
        if self.client.supervised:
            return None  # the supervisor found nothing to resume from
        if self._saves.rank != 0:
            return None  # rank 0 looks, and tells the others
        decision = prepare_resume(self.store.root)
        return decision.resume_from.path if decision.resume_from is not None else None

    def _check(self, loaded: LoadedCheckpoint) -> None:
        mismatch = state_mismatch(loaded, self.model, self.components, strict=self.strict)
        for name in loaded.state:
            if name != "rng" and name not in self.components:
                logger.warning(
                    "checkpoint %s has %r state; nothing restores it", loaded.path.name, name
                )
        if mismatch is not None:
            raise mismatch

    # lifetime

    def close(self) -> None:
        """Wait for the save in flight to be durable (raising its failure), release signals."""
        if self._closed:
            return
        try:
            self._collect(wait=True)
        finally:
            self._closed = True
            self._saves.close()
            self._signals.close()
            if self._owns_client:
                self.client.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:
            # The loop's own exception is on its way; this one must not hide it.
            logger.exception("the checkpoint in flight failed as well")
