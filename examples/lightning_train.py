"""A PyTorch Lightning job with stalwart's one-line integration.

    stalwart run --ckpt-dir ckpt -- python examples/lightning_train.py --dir ckpt
    stalwart checkpoints best --dir ckpt --metric val_loss

stalwart finds the `*.ckpt` files (and the `last.ckpt` alias) in ckpt on its own.

It is an ordinary Lightning script: a ModelCheckpoint with `save_last=True` and
`fit(ckpt_path="last")`, so it resumes by itself. `StalwartCallback()` adds what the
supervisor can use: heartbeats, saves at the advised interval instead of every
`--every` steps, the save cost, `val_loss` and `train_loss` in each checkpoint's
manifest, and a final save then exit 0 when the job is stopped (Ctrl-C on
`stalwart run`, `stalwart stop`, a preemption notice). Without stalwart the callback
does nothing and the script runs as it would anyway.

The model is a small MLP regressing a fixed random linear map (no download); an epoch is
`--batches` batches and validation runs at the end of each epoch.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from stalwart.lightning import StalwartCallback

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*exists and is not empty.*")


class Regressor(L.LightningModule):
    def __init__(self, width: int = 32, lr: float = 0.05, step_s: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
        )

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hparams["step_s"]:
            time.sleep(self.hparams["step_s"])  # --step-s: slow it down to watch it
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def loaders(batches: int, batch_size: int = 16) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(16, 1, generator=generator)

    def dataset(n: int) -> torch.utils.data.TensorDataset:
        x = torch.randn(n, 16, generator=generator)
        return torch.utils.data.TensorDataset(x, x @ truth + 0.1 * torch.randn(n, 1))

    train = torch.utils.data.DataLoader(dataset(batches * batch_size), batch_size, shuffle=True)
    val = torch.utils.data.DataLoader(dataset(4 * batch_size), batch_size)
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("ckpt"), help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500, help="the script's own save cadence")
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch")
    parser.add_argument("--step-s", type=float, default=0.0, help="sleep per step (demos)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    train, val = loaders(args.batches)
    checkpoints = ModelCheckpoint(
        dirpath=args.dir,
        filename="{epoch}-{step}",
        save_last=True,
        save_top_k=-1,  # stalwart's retention prunes (checkpoint.keep_last, keep_best)
        every_n_train_steps=args.every,
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[checkpoints, StalwartCallback()],
    )
    trainer.fit(Regressor(step_s=args.step_s), train, val, ckpt_path="last")


if __name__ == "__main__":
    main()
