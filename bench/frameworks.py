"""Step time of Lightning and Hugging Face jobs with stalwart's callback against without it.

    .venv/bin/python bench/frameworks.py [--rounds 8] [--lightning-steps 1200] [--hf-steps 300]

The callback runs as under `stalwart run`: a notify socket with a stand-in supervisor
draining it, an advice file whose interval is long enough that no save happens. So what
is measured is what it costs at every step: Lightning's or the Trainer's dispatch of its
hooks, and its own per-step work (one clock read on most steps; every 50 ms a heartbeat,
at most one datagram per 0.1 s, and a stat of the advice file).

With and without are interleaved inside each fit: every `--block` steps the framework's
list of callbacks is swapped between one with the callback and one without, so both see
the same machine (this VM is shared; separate fits differ by +-30% in step time alone).
Per fit, the ratio of the median step with to the median step without; reported over
the rounds as median and quartiles, on two clocks: wall time, and the training thread's
CPU time. The hook alone is also timed per call.

Models: the Lightning example's MLP (16-256-1, batch 64: a tiny step, the worst case for a
per-step cost) and the HF example's 2-layer GPT-2; CPU, one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
WARMUP_STEPS = 20


@contextlib.contextmanager
def supervised_env() -> Iterator[dict[str, str]]:
    """What `stalwart run` gives a trainer, with a supervisor stand-in reading heartbeats."""
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as folder:
        advice = Path(folder) / "advice.json"
        advice.write_text(
            json.dumps(
                {"interval_s": 1e9, "checkpoint_now": 0, "drain": False, "deadline_unix": None}
            )
        )
        notify = Path(folder) / "notify.sock"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(notify))
        receiver.settimeout(0.2)
        stop = threading.Event()
        received = [0]

        def drain() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    receiver.recv(65536)
                    received[0] += 1

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        env = {
            "STALWART_RUN_ID": "bench",
            "STALWART_ATTEMPT": "0",
            "STALWART_CKPT_DIR": folder,
            "STALWART_NOTIFY_SOCKET": str(notify),
            "STALWART_ADVICE_FILE": str(advice),
        }
        try:
            yield env
        finally:
            stop.set()
            reader.join()
            receiver.close()
            print(f"(heartbeats received by the stand-in supervisor: {received[0]})")


class Interleaver:
    """Stamps every step end (wall, thread CPU) and swaps the callback lists every block."""

    def __init__(self, block: int, with_list: list[Any], without_list: list[Any]) -> None:
        self.block = block
        self.lists = {True: with_list, False: without_list}
        self.active = True
        self.stamps: list[tuple[float, float, bool]] = []

    def tick(self, install: Callable[[list[Any]], None]) -> None:
        self.stamps.append((time.perf_counter(), time.thread_time(), self.active))
        if len(self.stamps) % self.block == 0:
            self.active = not self.active
            install(self.lists[self.active])

    def ratios(self) -> dict[str, float]:
        """Median step with / median step without, per clock (warm-up steps left out)."""
        steps: dict[tuple[str, bool], list[float]] = {}
        for before, after in itertools.pairwise(self.stamps[WARMUP_STEPS:]):
            for index, clock in enumerate(("wall", "cpu")):
                steps.setdefault((clock, before[2]), []).append(after[index] - before[index])
        return {
            clock: statistics.median(steps[(clock, True)])
            / statistics.median(steps[(clock, False)])
            for clock in ("wall", "cpu")
        } | {"step_s": statistics.median(steps[("wall", False)])}


# -- Lightning ----------------------------------------------------------------------------


def lightning_fit(steps: int, block: int, env: dict[str, str]) -> dict[str, float]:
    import lightning as L
    import lightning_train
    from lightning.pytorch.callbacks import Callback

    from stalwart.lightning import StalwartCallback

    class Clock(Callback):
        def __init__(self) -> None:
            self.interleaver: Interleaver | None = None

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
            assert self.interleaver is not None

            def install(callbacks: list[Any]) -> None:
                trainer.callbacks = callbacks  # a new list: the running hook loop is unaffected

            self.interleaver.tick(install)

    clock = Clock()
    stalwart = StalwartCallback(environ=env)
    clock.interleaver = Interleaver(block, [stalwart, clock], [clock])
    train, _ = lightning_train.loaders(batches=steps + 1, batch_size=64)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[stalwart, clock],
    )
    trainer.fit(lightning_train.Regressor(width=256), train)
    return clock.interleaver.ratios()


def lightning_hook_cost_us(env: dict[str, str], calls: int = 20000) -> float:
    """The callback's per-batch hook alone, on a stand-in trainer."""
    from stalwart.client import Client
    from stalwart.lightning import StalwartCallback

    class Trainer:
        global_step = 0
        received_sigterm = False
        world_size = 1

    callback = StalwartCallback(environ=env)
    callback.client = Client(env)
    trainer = Trainer()
    started = time.perf_counter()
    for step in range(calls):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    callback.client.close()
    return elapsed / calls * 1e6


# -- Hugging Face -------------------------------------------------------------------------


def hf_fit(steps: int, block: int, env: dict[str, str]) -> dict[str, float]:
    import hf_train
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback

    from stalwart.hf import StalwartCallback

    transformers.logging.set_verbosity_error()
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    holder: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            handler = holder["trainer"].callback_handler

            def install(callbacks: list[Any]) -> None:
                handler.callbacks = callbacks

            holder["interleaver"].tick(install)

    with tempfile.TemporaryDirectory(prefix="sw-bench-hf-") as out:
        args = transformers.TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=8,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = Trainer(
            model=GPT2LMHeadModel(config),
            args=args,
            train_dataset=hf_train.TokenIds(8 * (steps + 1)),
            callbacks=[StalwartCallback(environ=env), Clock()],
        )
        everything = list(trainer.callback_handler.callbacks)
        without = [c for c in everything if not isinstance(c, StalwartCallback)]
        holder["trainer"] = trainer
        holder["interleaver"] = Interleaver(block, everything, without)
        trainer.train()
    result: dict[str, float] = holder["interleaver"].ratios()
    return result


# -- common -------------------------------------------------------------------------------


def report(name: str, fits: list[dict[str, float]]) -> None:
    step_ms = statistics.median(f["step_s"] for f in fits) * 1e3
    print(f"{name}: median step without the callback {step_ms:.3f} ms ({len(fits)} fits)")
    for clock in ("wall", "cpu"):
        ratios = sorted(f[clock] for f in fits)
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"  {clock:4}: step with / without: median {statistics.median(ratios):.4f}, "
            f"quartiles {q1:.4f}..{q3:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=4, help="steps before each swap")
    parser.add_argument("--lightning-steps", type=int, default=1200)
    parser.add_argument("--hf-steps", type=int, default=300)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    with supervised_env() as env:
        hook_us = lightning_hook_cost_us(env)
        print(f"Lightning callback's batch-end hook alone, in a loop: {hook_us:.2f} us per call")
        lightning_fit(100, args.block, env)  # warm-up: first-time code paths
        fits = [lightning_fit(args.lightning_steps, args.block, env) for _ in range(args.rounds)]
        report("Lightning (MLP 16-256-1, batch 64)", fits)
        step_us = statistics.median(f["step_s"] for f in fits) * 1e6
        print(f"  the batch-end hook alone is {hook_us / step_us * 100:.3f} % of that step")
        hf_fit(40, args.block, env)
        fits = [hf_fit(args.hf_steps, args.block, env) for _ in range(args.rounds)]
        report("Hugging Face (GPT-2 2x32, batch 8x32 tokens)", fits)


if __name__ == "__main__":
    main()
