"""PyTorch Lightning drop-in: add `StalwartCallback()` to the Trainer's callbacks.

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from stalwart.lightning import StalwartCallback

    checkpoints = ModelCheckpoint(dirpath="ckpt", save_last=True, every_n_train_steps=500)
    trainer = L.Trainer(callbacks=[checkpoints, StalwartCallback()])
    trainer.fit(model, data, ckpt_path="last")

Under `stalwart run` it sends heartbeats (also during validation), saves at the interval
the supervisor advises (and when asked: `stalwart checkpoint`, a preemption notice) through
your `ModelCheckpoint`s, so names, top-k and `last.ckpt` stay Lightning's; reports what
each save cost; records the logged metrics (e.g. `val_loss`) in the checkpoint's manifest;
and on a stop request (SIGTERM, drain) saves once more and exits 0. Outside stalwart it
does nothing. Importing this module imports Lightning (`pip install stalwart[lightning]`);
nothing else in stalwart does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from stalwart.client import Client

logger = logging.getLogger(__name__)

FRAMEWORK = "lightning"
ADVICE_POLL_S = 0.05
"""On one process, heartbeats and the advice file (a stat) are looked at most this often:
doing it after every step costs ~1% of a 3 ms step. Multi-process jobs decide every step
(rank 0 broadcasts), so that all ranks save at the same step."""
FALLBACK_NAME = "stalwart-step={step}.ckpt"
"""Written only when no ModelCheckpoint would save (none configured, or a monitored top-k
without `save_last` where the current value is not among the best)."""


def _no_step_saves(*args: Any, **kwargs: Any) -> None:
    """Stands in for a ModelCheckpoint's per-batch trigger while stalwart sets the cadence."""


class StalwartCallback(Callback):
    """Heartbeats, saves at the advised interval, metrics in manifests, clean drains."""

    def __init__(
        self,
        *,
        metrics: Sequence[str] | None = None,
        take_over_cadence: bool = True,
        exit_on_drain: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`metrics`: names of logged metrics to record in each manifest (default: every
        scalar in `trainer.callback_metrics`). `take_over_cadence`: your ModelCheckpoints'
        step and time triggers (`every_n_train_steps`, `train_time_interval`) give way to
        the advised interval; epoch and validation-end saves are left alone.
        `exit_on_drain`: after the drain save, exit 0 at once (the code after `fit` does not
        run on a half-trained model); else `trainer.should_stop` is set.
        """
        super().__init__()
        self.metrics = tuple(metrics) if metrics is not None else None
        self.take_over_cadence = take_over_cadence
        self.exit_on_drain = exit_on_drain
        self._environ = environ
        self.client: Client | None = None
        self.saves = 0  # saves this callback made (its own cadence and the drain)
        self.drained = False
        self._taken_over: list[ModelCheckpoint] = []
        self._world_size = 1
        self._next_poll_s = 0.0

    # -- Lightning hooks ------------------------------------------------------------------

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in self._taken_over:
            vars(callback).pop("on_train_batch_end", None)
        self._taken_over.clear()
        if self.client is not None:
            self.client.close()
            self.client = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.client is None:
            # Made here, not at setup: the interval counts from the start of training (a
            # resume restored a checkpoint just now), not from before the restore.
            self.client = Client(self._environ)
        client = self._supervised()
        if client is None:
            return
        client.ready()
        client.skip_unsupported("the Lightning callback")
        self._world_size = trainer.world_size
        if self.take_over_cadence:
            self._take_over(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._world_size == 1:
            # Most steps end here. A SIGTERM in between is caught by on_exception.
            now_s = time.monotonic()
            if now_s < self._next_poll_s:
                return
            self._next_poll_s = now_s + ADVICE_POLL_S
        client = self._supervised()
        if client is None:
            return
        step = trainer.global_step
        client.step(step, _loss_of(outputs))  # the supervisor watches it for NaN and spikes
        sigterm = trainer.received_sigterm and not self.drained
        # One stat of the advice file: should_checkpoint says yes when draining too.
        due = sigterm or client.should_checkpoint(step)
        drain = due and (sigterm or client.drain)
        if self._world_size > 1:
            # Every rank must take part in a save: rank 0's clock decides for all, each step.
            due, drain = trainer.strategy.broadcast((due, drain), src=0)
        if not due:
            return
        self.save(trainer)
        if drain:
            self._stop(trainer)

    def on_validation_batch_end(  # noqa: PLR0917 - Lightning's signature
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        client = self._supervised()
        if client is not None:
            client.step(trainer.global_step)  # a long validation is not a hang

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        client = self._supervised()
        if client is None or self.drained or not isinstance(exception, SystemExit):
            return
        if trainer.received_sigterm or client.drain:
            # Lightning leaves on SIGTERM at the end of the batch, which can come after this
            # callback's turn in it: the drain save is made here then, at the same boundary.
            self.drained = True
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        client = self._supervised()
        if client is not None and not self.drained:
            client.done()

    # -- saving ---------------------------------------------------------------------------

    def save(self, trainer: pl.Trainer) -> list[Path]:
        """Save now, through the trainer's ModelCheckpoints; report the cost; record metrics.

        Returns the files written (empty when this step was already saved).
        """
        client = self.client
        step = trainer.global_step
        started_s = time.monotonic()
        if client is not None:
            client.checkpoint_begin(step)
        written = self._write(trainer)
        if written and trainer.is_global_zero:
            self._record(written, self._metrics(trainer), step)
        stall_s = time.monotonic() - started_s
        self.saves += 1
        if client is not None:
            if written:
                size_bytes = sum(p.stat().st_size for p in written if p.exists())
                client.saved(step, stall_s=stall_s, size_bytes=size_bytes, path=written[0])
            else:
                client.saved(step)
        logger.info(
            "stalwart: saved step %d in %.3f s: %s", step, stall_s, ", ".join(map(str, written))
        )
        return written

    def _write(self, trainer: pl.Trainer) -> list[Path]:
        written: list[Path] = []
        original = trainer.save_checkpoint

        def recording(filepath: Any, *args: Any, **kwargs: Any) -> None:
            original(filepath, *args, **kwargs)
            written.append(Path(filepath))

        callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        already = any(c._last_global_step_saved == trainer.global_step for c in callbacks)
        trainer.save_checkpoint = recording  # type: ignore[method-assign]
        try:
            for callback in callbacks:
                if callback._should_skip_saving_checkpoint(trainer):
                    continue  # sanity check, fast_dev_run, or this step is saved already
                candidates = callback._monitor_candidates(trainer)
                if callback.monitor is None or callback.monitor in candidates:
                    callback._save_topk_checkpoint(trainer, candidates)
                callback._save_last_checkpoint(trainer, candidates)
            if not written and not already:
                trainer.save_checkpoint(self._fallback_path(trainer, callbacks))
        finally:
            vars(trainer).pop("save_checkpoint", None)
        return written

    def _fallback_path(self, trainer: pl.Trainer, callbacks: list[ModelCheckpoint]) -> Path:
        folder: str | os.PathLike[str] | None = callbacks[0].dirpath if callbacks else None
        if folder is None and self.client is not None and self.client.ckpt_dir is not None:
            folder = self.client.ckpt_dir
        if folder is None:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / FALLBACK_NAME.format(step=trainer.global_step)

    def _metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        from stalwart.checkpoint.frameworks import finite_metrics

        values = finite_metrics(trainer.callback_metrics)
        if self.metrics is None:
            return values
        return {name: values[name] for name in self.metrics if name in values}

    def _record(self, written: list[Path], metrics: dict[str, float], step: int) -> None:
        from stalwart.checkpoint.frameworks import record_metrics

        client = self.client
        for path in written:
            try:
                record_metrics(
                    path,
                    metrics,
                    run_id=client.run_id if client is not None else "",
                    attempt=client.attempt if client is not None else 0,
                    meta={"framework": FRAMEWORK, "global_step": step},
                )
            except Exception as exc:  # never fail training over a manifest
                logger.warning("stalwart: could not record metrics for %s: %s", path, exc)

    # -- helpers --------------------------------------------------------------------------

    def _supervised(self) -> Client | None:
        client = self.client
        return client if client is not None and client.supervised else None

    def _take_over(self, trainer: pl.Trainer) -> None:
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or callback in self._taken_over:
                continue
            if callback._every_n_train_steps > 0 or callback._train_time_interval is not None:
                # An instance attribute: the callback's state_key (in every checkpoint) stays.
                callback.on_train_batch_end = _no_step_saves  # type: ignore[method-assign]
                self._taken_over.append(callback)
                logger.info(
                    "stalwart: %s saves at the advised interval instead of its own step/time "
                    "trigger",
                    type(callback).__name__,
                )

    def _stop(self, trainer: pl.Trainer) -> None:
        self.drained = True
        if self.exit_on_drain:
            logger.info("stalwart: drained at step %d; exiting 0", trainer.global_step)
            raise SystemExit(0)
        trainer.should_stop = True


def _loss_of(outputs: Any) -> Any:
    """The training loss in what `training_step` returned (a tensor, or a dict with "loss")."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss if hasattr(loss, "__float__") and getattr(loss, "ndim", 0) == 0 else None
