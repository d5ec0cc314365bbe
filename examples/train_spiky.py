"""A small real torch job with a poisoned stretch of data: its loss turns NaN there.

    python examples/train_spiky.py                     # standalone: ends with a NaN loss
    stalwart run --set divergence.skip_batches=50 -- python examples/train_spiky.py
                                                       # rolls back, skips the stretch, healthy

A regression MLP (ReLU, plain SGD, no gradient clipping) learns y = x.w + noise from a
fixed synthetic dataset drawn by a ResumableSampler. The batches at data positions
`--poison-at` .. `--poison-at + --poison-len` have their inputs scaled by `--poison-scale`
(1e6): one step on such a batch throws the weights to ~1e12, the next overflows, and the loss
is NaN from then on, for good. The position is the sampler's (epoch and offset), not the
step: skipping data moves past it, as a supervisor's divergence rollback does.

`--nan-after-steps K` instead makes every process's loss NaN K steps after it starts
(whatever the data): a job that diverges every time, for the rollback bound.

It reports its loss with every `step_end` (the supervisor's NaN and spike watch), saves
every `--save-every` steps, and writes a JSON summary (`--out`): steps, final loss (mean of
the last 20), last loss, and whether it ever saw a non-finite loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from stalwart.torch import Checkpointer, ResumableSampler


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poison-at", type=int, default=150, help="first poisoned batch")
    parser.add_argument("--poison-len", type=int, default=5, help="poisoned batches in a row")
    parser.add_argument("--poison-scale", type=float, default=1e6)
    parser.add_argument("--nan-after-steps", type=int, default=0, help="0: off")
    parser.add_argument("--save-every", type=int, default=25, help="steps between saves")
    parser.add_argument("--step-sleep-s", type=float, default=0.0, help="a slower step")
    parser.add_argument("--ckpt-dir", default="checkpoints-spiky")
    parser.add_argument("--out", help="summary JSON (default: <checkpoint dir>/final.json)")
    parser.add_argument("--log", help="append one JSON line per step (attempt, step, loss)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    x = torch.randn(args.samples, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(args.samples, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    sampler = ResumableSampler(args.samples, seed=args.seed, batch_size=args.batch)
    attempt = int(os.environ.get("STALWART_ATTEMPT", "0") or 0)
    losses: list[float] = []
    nonfinite = False
    with Checkpointer(model, optimizer, data=sampler, ckpt_dir=args.ckpt_dir) as ckpt:
        step = first = ckpt.restore()
        log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
        if step:
            print(f"resumed at step {step}, data epoch {sampler.epoch} offset {sampler.offset}")
        indices = iter(sampler)
        while step < args.steps:
            position = (sampler.epoch * len(sampler) + sampler.offset) // args.batch
            batch = [next(indices, None) for _ in range(args.batch)]
            if None in batch:
                indices = iter(sampler)
                continue
            inputs = x[batch]
            if args.poison_at <= position < args.poison_at + args.poison_len:
                inputs = inputs * args.poison_scale
            loss = nn.functional.mse_loss(model(inputs), y[batch])
            if args.nan_after_steps and step - first >= args.nan_after_steps:
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = loss.item()
            nonfinite = nonfinite or not math.isfinite(value)
            losses.append(value)
            if log is not None:
                line = {"attempt": attempt, "step": step, "loss": value}
                print(json.dumps(line), file=log, flush=True)
            if args.step_sleep_s:
                time.sleep(args.step_sleep_s)
            if step % args.save_every == 0:
                ckpt.save(step)
            if ckpt.step_end(step, loss):
                return 0
        ckpt.save(step, wait=True)
        if log is not None:
            log.close()
    tail = losses[-20:]
    summary = {
        "steps": step,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "last_loss": losses[-1] if losses else None,
        "saw_nonfinite": nonfinite,
    }
    out = Path(args.out) if args.out else ckpt.store.root / "final.json"
    out.write_text(json.dumps(summary) + "\n", encoding="utf-8")
    print(f"done: {step} steps, final loss {summary['final_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
