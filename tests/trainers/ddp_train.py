"""A data-parallel trainer for the multi-node tests, started by torchrun.

Gloo connects the ranks; DistributedDataParallel keeps the replicas equal; the
Checkpointer saves sharded (DCP) checkpoints. Each rank appends what it did to
`<out>/rank-<R>.jsonl` (its pid, the checkpoint it resumed from, its final digest), so a
test can kill one rank and check where every rank resumed and what it ended with.

    torchrun --nproc-per-node 2 ddp_train.py --steps 40 --out OUT [--ckpt-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stalwart.torch import Checkpointer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(16, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.dropout(torch.tanh(self.hidden(x)), 0.2)  # draws from the RNG
        return self.out(hidden)


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data of `step` on `rank`: a function of both, so the position is the step."""
    generator = torch.Generator().manual_seed(10_000 * step + rank)
    x = torch.randn(8, 16, generator=generator)
    return x, x.sum(dim=1, keepdim=True)


def digest(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """Every tensor of the model and optimizer state, bit for bit."""
    hasher = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        hasher.update(key.encode())
        hasher.update(value.detach().cpu().contiguous().numpy().tobytes())
    for index, state in sorted(optimizer.state_dict()["state"].items()):
        for key, value in sorted(state.items()):
            hasher.update(f"{index}.{key}".encode())
            hasher.update(torch.as_tensor(value).cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="without a supervisor")
    parser.add_argument("--every-s", type=float, default=None, help="without a supervisor")
    parser.add_argument("--step-s", type=float, default=0.0)
    parser.add_argument("--sync", action="store_true", help="synchronous saves")
    parser.add_argument("--digest-at", type=int, action="append", default=[])
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"rank-{rank}.jsonl"

    def record(**fields: object) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")

    torch.manual_seed(0)
    model = DistributedDataParallel(Net())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(1 + rank)  # each rank its own dropout stream
    checkpointer = Checkpointer(
        model,
        optimizer,
        ckpt_dir=args.ckpt_dir,
        interval_s=args.every_s,
        async_save=not args.sync,
    )
    with checkpointer:
        step = checkpointer.restore()
        origin = checkpointer.restored_from
        record(event="start", step=step, resumed_from=None if origin is None else origin.name)
        while step < args.steps:
            x, y = batch(step, rank)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step in args.digest_at:
                record(event="digest", step=step, digest=digest(model, optimizer))
            if args.step_s:
                time.sleep(args.step_s)
            if checkpointer.step_end(step):
                record(event="drained", step=step)
                break
    if step >= args.steps:
        record(event="final", step=step, digest=digest(model, optimizer))
    dist.barrier()
    # Not destroy_process_group(): under load, freeing DDP's gloo group can deadlock (the
    # group's destructor, holding the GIL, joins a gloo thread that waits for the GIL; seen
    # about once in ten runs on 2 busy cores, torch 2.13). Everything is written already.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
