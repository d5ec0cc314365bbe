"""An unmodified Hugging Face Trainer script (no stalwart import) that resumes with
`get_last_checkpoint(output_dir)`. A tiny GPT-2 built from a config learns integer ids;
nothing is downloaded. For the tests it records where each attempt started, and can
damage a checkpoint it just saved, once, then die, as a crash during the save would:
`--tear trainer_state@10` removes checkpoint-10/trainer_state.json, `--tear optimizer@20`
truncates checkpoint-20/optimizer.pt."""

from __future__ import annotations

import argparse
import json
import os
import signal
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


class Ids(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, length: int = 16, vocab: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Record(TrainerCallback):
    """Test instrumentation: a JSON line per attempt start and end; one-time damage."""

    def __init__(self, record: Path, tears: dict[int, str], step_s: float) -> None:
        self.record, self.tears, self.step_s = record, tears, step_s

    def note(self, **fields: Any) -> None:
        fields["attempt"] = int(os.environ.get("STALWART_ATTEMPT", "0"))
        with self.record.open("a") as handle:
            handle.write(json.dumps(fields) + "\n")

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.note(event="start", step=state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        time.sleep(self.step_s)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        step = state.global_step
        marker = self.record.with_name(f"tore-{step}")
        if step not in self.tears or marker.exists():
            return
        marker.touch()
        folder = Path(args.output_dir) / f"checkpoint-{step}"
        if self.tears[step] == "trainer_state":
            (folder / "trainer_state.json").unlink()
        else:
            optimizer = folder / "optimizer.pt"
            os.truncate(optimizer, optimizer.stat().st_size // 2)
        self.note(event="tore", step=step, what=self.tears[step])
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.note(event="end", step=state.global_step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--save-steps", type=int, default=5)
    parser.add_argument("--step-s", type=float, default=0.0)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--tear", action="append", default=[], help="KIND@STEP")
    args = parser.parse_args()
    tears = {int(t.split("@")[1]): t.split("@")[0] for t in args.tear}
    torch.set_num_threads(1)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    training = TrainingArguments(
        output_dir=str(args.out),
        max_steps=args.steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=5,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=training,
        train_dataset=Ids(64),
        callbacks=[Record(args.record, tears, args.step_s)],
    )
    last = get_last_checkpoint(str(args.out)) if args.out.is_dir() else None
    trainer.train(resume_from_checkpoint=last)


if __name__ == "__main__":
    main()
