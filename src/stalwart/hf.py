"""Hugging Face Trainer drop-in: add `StalwartCallback()` to the Trainer's callbacks.

    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint
    from stalwart.hf import StalwartCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[StalwartCallback()])
    trainer.train(resume_from_checkpoint=get_last_checkpoint(args.output_dir))

Under `stalwart run` it sends heartbeats (also during evaluation), saves at the interval
the supervisor advises (and when asked) through the Trainer's own `checkpoint-N/` saves,
in place of `save_steps`; reports what each save cost; records the latest logged metrics
(e.g. `eval_loss`) in the checkpoint's manifest; and on a stop request (SIGTERM, drain)
saves once more and exits 0. Outside stalwart it does nothing. Importing this module
imports transformers (`pip install stalwart[hf]`); nothing else in stalwart does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from stalwart.client import Client

logger = logging.getLogger(__name__)

FRAMEWORK = "hf"
ADVICE_POLL_S = 0.05
"""On one process, heartbeats and the advice file (a stat) are looked at most this often.
Multi-process jobs decide every step (rank 0 broadcasts), so all ranks save at one step."""


class StalwartCallback(TrainerCallback):
    """Heartbeats, saves at the advised interval, metrics in manifests, clean drains."""

    def __init__(
        self,
        *,
        metrics: Sequence[str] | None = None,
        take_over_cadence: bool = True,
        exit_on_drain: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`metrics`: names in the Trainer's logs to record in each manifest (default: the
        latest value of every number logged, `loss`, `eval_loss`, ...).
        `take_over_cadence`: `save_steps` gives way to the advised interval (the save at the
        last step and epoch-end saves are left alone). `exit_on_drain`: after the drain
        save, exit 0 at the end of the epoch loop (the code after `train()` does not run
        on a half-trained model); else `train()` returns.
        """
        self.metrics = tuple(metrics) if metrics is not None else None
        self.take_over_cadence = take_over_cadence
        self.exit_on_drain = exit_on_drain
        self._environ = environ
        self.client: Client | None = None
        self.saves = 0  # saves reported through this callback
        self.drained = False
        self._draining = False
        self._stop_signal = False
        self._previous_handler: Any = None
        self._handler_installed = False
        self._save_began_s: float | None = None
        self._next_poll_s = 0.0
        self._world_size = 1

    # -- Trainer events -------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.client is None:
            self.client = Client(self._environ)
        if not self.client.supervised:
            return
        self.client.ready()
        self.client.skip_unsupported("the Hugging Face callback")
        self._world_size = args.world_size
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_stop_signal)
            self._handler_installed = True

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        client = self._supervised()
        if client is None:
            return control
        step = state.global_step
        stop = self._stop_signal and not self._draining
        due = stop
        if not stop and self._poll_now():
            client.step(step)
            # One stat of the advice file: should_checkpoint says yes when draining too.
            due = client.should_checkpoint(step)
        drain = due and (stop or client.drain)
        if self._world_size > 1:
            due, drain = _agree(due, drain, args)
        if self.take_over_cadence:
            final = 0 < state.max_steps <= step
            control.should_save = due or (control.should_save and final)
        else:
            control.should_save = control.should_save or due
        if drain:
            control.should_training_stop = True
            self._draining = True
        if control.should_save:
            self._save_begins(step)
        return control

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.drained and self.exit_on_drain:
            self._exit(state)
        if control.should_save and self._supervised() is not None:
            self._save_begins(state.global_step)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._not_saving_yet()
        loss = (kwargs.get("logs") or {}).get("loss")
        client = self._supervised()
        if client is not None and isinstance(loss, int | float) and state.is_world_process_zero:
            client.report_loss(state.global_step, loss)  # watched for NaN and spikes

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._not_saving_yet()

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        client = self._supervised()
        if client is not None:
            client.step(state.global_step)  # a long evaluation is not a hang

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        client = self._supervised()
        if client is None:
            return
        step = state.global_step
        began_s = self._save_began_s if self._save_began_s is not None else time.monotonic()
        self._save_began_s = None
        path = Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        if state.is_world_process_zero and path.is_dir():
            self._record(path, self._metrics(state), step, client)
        stall_s = time.monotonic() - began_s
        self.saves += 1
        size_bytes = _tree_bytes(path) if path.is_dir() else None
        client.saved(step, stall_s=stall_s, size_bytes=size_bytes, path=path)
        logger.info("stalwart: saved %s in %.3f s", path, stall_s)
        if self._draining:
            self.drained = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        client = self.client
        if client is None:
            return
        if client.supervised:
            if self.drained and self.exit_on_drain:
                self._exit(state)
            if not self._draining:
                client.done()
        self._restore_handler()
        client.close()
        self.client = None

    # -- helpers --------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = True  # the training loop acts on it at the next step end

    def _restore_handler(self) -> None:
        if self._handler_installed and threading.current_thread() is threading.main_thread():
            previous = self._previous_handler
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self._handler_installed = False

    def _poll_now(self) -> bool:
        """Whether to heartbeat and read the advice at this step (see ADVICE_POLL_S)."""
        if self._world_size > 1:
            return True
        now_s = time.monotonic()
        if now_s < self._next_poll_s:
            return False
        self._next_poll_s = now_s + ADVICE_POLL_S
        return True

    def _supervised(self) -> Client | None:
        client = self.client
        return client if client is not None and client.supervised else None

    def _save_begins(self, step: int) -> None:
        if self._save_began_s is None and self.client is not None:
            self.client.checkpoint_begin(step)
        self._save_began_s = time.monotonic()

    def _not_saving_yet(self) -> None:
        """Logging and evaluation run between the step end and the save: not its cost."""
        if self._save_began_s is not None:
            self._save_began_s = time.monotonic()

    def _metrics(self, state: TrainerState) -> dict[str, float]:
        from stalwart.checkpoint.frameworks import finite_metrics

        latest: dict[str, Any] = {}
        for entry in state.log_history:
            latest.update(entry)
        latest.pop("step", None)
        values = finite_metrics(latest)
        if self.metrics is None:
            return values
        return {name: values[name] for name in self.metrics if name in values}

    def _record(self, path: Path, metrics: dict[str, float], step: int, client: Client) -> None:
        from stalwart.checkpoint.frameworks import record_metrics

        try:
            record_metrics(
                path,
                metrics,
                run_id=client.run_id,
                attempt=client.attempt,
                meta={"framework": FRAMEWORK, "global_step": step},
            )
        except Exception as exc:  # never fail training over a manifest
            logger.warning("stalwart: could not record metrics for %s: %s", path, exc)

    def _exit(self, state: TrainerState) -> None:
        logger.info("stalwart: drained at step %d; exiting 0", state.global_step)
        self._restore_handler()
        raise SystemExit(0)


def _agree(due: bool, drain: bool, args: TrainingArguments) -> tuple[bool, bool]:
    """Rank 0's decision, for every rank: a save is collective."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return due, drain
    flags = torch.tensor([int(due), int(drain)], dtype=torch.int32, device=args.device)
    dist.broadcast(flags, src=0)
    return bool(flags[0].item()), bool(flags[1].item())


def _tree_bytes(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total
