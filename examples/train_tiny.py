"""A tiny character-level transformer that learns to add, resumable through stalwart.torch.

    python examples/train_tiny.py                       # standalone: about a minute on 2 cores
    stalwart run -- python examples/train_tiny.py       # supervised: advised saves, resumes
    python examples/train_tiny.py --steps 200 --d-model 32 --layers 1   # seconds, for tests

The corpus is generated from a fixed seed (no download): lines like `417+38=455`. The model
is a small GPT (token and position embeddings, pre-norm causal self-attention blocks with
dropout, an output layer tied to the token embedding) trained with AdamW under a warmup +
cosine schedule, on random windows of the corpus drawn by a ResumableSampler.

One `Checkpointer` carries everything a resume needs: weights, optimizer moments, the LR
schedule, the sampler's epoch and offset, the RNG streams (dropout) and a smoothed loss.
The same seed gives the same final weights bit for bit, however often the job is killed
and resumed. At the end it writes a JSON summary (`--out`): steps, final loss, and digests
of the weights and the optimizer state, to compare runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from stalwart.torch import Checkpointer, ResumableSampler

VOCAB = "0123456789+=\n"
CORPUS_SEED = 1234
"""The corpus is fixed; --seed varies the model's initialization, dropout and data order."""


def make_corpus(lines: int) -> torch.Tensor:
    rng = random.Random(CORPUS_SEED)
    text = []
    for _ in range(lines):
        a, b = rng.randrange(1000), rng.randrange(1000)
        text.append(f"{a}+{b}={a + b}\n")
    lookup = {char: i for i, char in enumerate(VOCAB)}
    return torch.tensor([lookup[char] for char in "".join(text)], dtype=torch.long)


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, d_model: int, layers: int, heads: int, block: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(len(VOCAB), d_model)
        self.positions = nn.Embedding(block, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, len(VOCAB), bias=False)
        self.head.weight = self.tokens.weight  # tied: stored once in the checkpoint
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tokens(idx) + self.positions(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class SmoothedLoss:
    """An exponential moving average of the loss, checkpointed so it survives restarts."""

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self.value: float | None = None

    def update(self, loss: float) -> float:
        self.value = (
            loss if self.value is None else self.decay * self.value + (1 - self.decay) * loss
        )
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"]


def digest(tree: Any) -> str:
    """sha256 over every tensor's bytes and every value, in order: equal iff bitwise equal."""
    hasher = hashlib.sha256()

    def visit(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            hasher.update(f"{path}:{value.dtype}:{list(value.shape)}".encode())
            hasher.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(value[key], f"{path}/{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(item, f"{path}/{index}")
        else:
            hasher.update(f"{path}={value!r}".encode())

    visit(tree, "")
    return hasher.hexdigest()


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps in all")
    parser.add_argument("--d-model", type=int, default=64, help="model width")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--block", type=int, default=32, help="context length, characters")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-lines", type=int, default=20_000)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; one suits a model this small and leaves a core for the "
        "supervisor and the background checkpoint writer",
    )
    parser.add_argument(
        "--ckpt-dir",
        default="checkpoints",
        help="standalone checkpoint directory ($STALWART_CKPT_DIR wins under stalwart run)",
    )
    parser.add_argument("--ckpt-every-s", type=float, default=10.0, help="standalone save interval")
    parser.add_argument("--sync", action="store_true", help="save synchronously")
    parser.add_argument("--out", help="summary JSON (default: <checkpoint dir>/final.json)")
    parser.add_argument("--log", help="append one JSON line per step (attempt, step, loss)")
    parser.add_argument("--print-every", type=int, default=100)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Job:
    """Everything training touches; all of it but `data` is in each checkpoint."""

    data: torch.Tensor
    model: TinyGPT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: ResumableSampler
    smoothed: SmoothedLoss


def build(args: argparse.Namespace) -> Job:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    data = make_corpus(args.corpus_lines)
    model = TinyGPT(args.d_model, args.layers, args.heads, args.block, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(args.steps // 20, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, args.steps, warmup)
    )
    sampler = ResumableSampler(len(data) - args.block - 1, seed=args.seed)
    return Job(data, model, optimizer, scheduler, sampler, SmoothedLoss())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    job = build(args)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(args.log, "a", encoding="utf-8")) if args.log else None
        ckpt = stack.enter_context(
            Checkpointer(
                job.model,
                job.optimizer,
                job.scheduler,
                data=job.sampler,
                extra={"loss": job.smoothed},
                ckpt_dir=args.ckpt_dir,
                interval_s=args.ckpt_every_s,
                async_save=not args.sync,
            )
        )
        return train(args, job, ckpt, log)


def train(args: argparse.Namespace, job: Job, ckpt: Checkpointer, log: TextIO | None) -> int:
    data, model, optimizer, scheduler = job.data, job.model, job.optimizer, job.scheduler
    sampler, smoothed = job.sampler, job.smoothed
    attempt = int(os.environ.get("STALWART_ATTEMPT", "0") or 0)
    started_s = time.monotonic()
    step = first = ckpt.restore()
    if step:
        print(f"resumed at step {step} from {ckpt.restored_from}", flush=True)
        if log is not None:
            print(json.dumps({"attempt": attempt, "resumed": step}), file=log, flush=True)
    offsets = torch.arange(args.block)
    indices = iter(sampler)
    loss_value = float("nan")
    while step < args.steps:
        batch = []
        while len(batch) < args.batch:
            index = next(indices, None)
            if index is None:
                indices = iter(sampler)  # the sampler has moved on to the next epoch
                continue
            batch.append(index)
        starts = torch.tensor(batch).unsqueeze(1) + offsets
        x, y = data[starts], data[starts + 1]
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        loss_value = loss.item()
        smooth = smoothed.update(loss_value)
        if log is not None:
            line = {"attempt": attempt, "step": step, "loss": loss_value}
            print(json.dumps(line), file=log, flush=True)
        if step % args.print_every == 0 or step == args.steps:
            ms = 1000 * (time.monotonic() - started_s) / (step - first)
            print(
                f"step {step}/{args.steps}  loss {smooth:.4f}  "
                f"lr {scheduler.get_last_lr()[0]:.2e}  epoch {sampler.epoch}  "
                f"{ms:.1f} ms/step",
                flush=True,
            )
        if ckpt.step_end(step):
            print(f"stopping at step {step}: state saved, exiting", flush=True)
            return 0
    ckpt.save(step, wait=True)
    summary = {
        "steps": step,
        "final_loss": smoothed.value,
        "last_loss": loss_value,
        "weights_sha256": digest(model.state_dict()),
        "optimizer_sha256": digest(optimizer.state_dict()),
        "seconds_this_attempt": round(time.monotonic() - started_s, 3),
    }
    out = Path(args.out) if args.out else ckpt.store.root / "final.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"done: {step} steps, loss {smoothed.value:.4f}; summary in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
