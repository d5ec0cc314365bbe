"""An unmodified Lightning script (no stalwart import): ModelCheckpoint(save_last=True) and
fit(ckpt_path="last"). For the tests it records where each attempt started, and can tear
its own last.ckpt once, then die, as a crash in the middle of writing it would."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*exists and is not empty.*")


class Tiny(L.LightningModule):
    def __init__(self, step_s: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.step_s = step_s

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(self.step_s)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Record(Callback):
    """Test instrumentation: a JSON line per attempt start and end; the one-time tear."""

    def __init__(self, record: Path, dirpath: Path, tear_at: int | None, marker: Path) -> None:
        self.record, self.dirpath, self.tear_at, self.marker = record, dirpath, tear_at, marker

    def note(self, **fields: Any) -> None:
        fields["attempt"] = int(os.environ.get("STALWART_ATTEMPT", "0"))
        with self.record.open("a") as handle:
            handle.write(json.dumps(fields) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.note(event="start", step=trainer.global_step)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.tear_at and not self.marker.exists():
            self.marker.touch()
            last = self.dirpath / "last.ckpt"
            os.truncate(last, last.stat().st_size // 2)
            self.note(event="tore", step=trainer.global_step)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.note(event="end", step=trainer.global_step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--tear-at", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    checkpoints = ModelCheckpoint(
        dirpath=args.dir,
        filename="{epoch}-{step}",
        save_last=True,
        save_top_k=-1,
        every_n_train_steps=args.every,
    )
    record = Record(args.record, args.dir, args.tear_at, args.record.with_suffix(".tore"))
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record, checkpoints],
    )
    trainer.fit(Tiny(args.step_s), loader, ckpt_path="last")


if __name__ == "__main__":
    main()
