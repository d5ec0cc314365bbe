"""A Hugging Face Trainer job with stalwart's one-line integration.

    export HF_HUB_OFFLINE=1
    stalwart run --ckpt-dir out -- python examples/hf_train.py --out out
    stalwart checkpoints best --dir out --metric eval_loss

stalwart finds the Trainer's `checkpoint-N/` directories in out on its own.

It is an ordinary Trainer script that resumes with `get_last_checkpoint(output_dir)`.
`StalwartCallback()` adds what the supervisor can use: heartbeats (also during
evaluation), saves at the advised interval instead of every `--save-steps` steps, the
save cost, the latest `loss` and `eval_loss` in each checkpoint's manifest, and a final
save then exit 0 when the job is stopped (Ctrl-C on `stalwart run`, `stalwart stop`, a
preemption notice). Without stalwart the callback does nothing.

The model is a 2-layer GPT-2 built from a config, learning a fixed random sequence of
token ids (no tokenizer, no download).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from stalwart.hf import StalwartCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub


class TokenIds(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Windows of a fixed random token stream with a learnable pattern (a repeated motif)."""

    def __init__(self, n: int, length: int = 32, vocab: int = 128, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        motif = torch.randint(0, vocab, (8,), generator=torch.Generator().manual_seed(1234))
        noise = torch.randint(0, vocab, (n, length), generator=generator)
        keep = torch.rand(n, length, generator=generator) < 0.7
        self.ids = torch.where(keep, motif.repeat(length // 8)[None, :], noise)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Slow(TrainerCallback):
    """--step-s: sleep after each step, to watch it in a demo."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        time.sleep(self.step_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="Trainer output_dir")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--save-steps", type=int, default=200, help="the script's own cadence")
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--step-s", type=float, default=0.0, help="sleep per step (demos)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    training = TrainingArguments(
        output_dir=str(args.out),
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=10,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    callbacks: list[TrainerCallback] = [StalwartCallback()]
    if args.step_s:
        callbacks.append(Slow(args.step_s))
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=training,
        train_dataset=TokenIds(512),
        eval_dataset=TokenIds(32, seed=1),
        callbacks=callbacks,
    )
    last = get_last_checkpoint(str(args.out)) if args.out.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(args.out / "final"))


if __name__ == "__main__":
    main()
