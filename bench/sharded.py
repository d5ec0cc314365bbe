"""Costs of sharded (DCP) checkpoints, two ranks under torchrun on this machine (gloo), each
as a ratio against a baseline measured in the same run.

1. Commit protocol: `Checkpointer.save(wait=True)` (DCP shards + each rank's own state, each
   rank fsyncs and hashes its files, rank 0 gathers and commits one manifest) vs a bare
   `torch.distributed.checkpoint.save` of the same state into a fresh directory (which
   fsyncs its shards too). Goal: <= 1.5 (the digests are a second read of what was written,
   from the page cache).
2. Training stall of an asynchronous sharded save vs a synchronous one. Goal: <= 0.25
   (DCP's async save copies the state to memory before returning; the write, digests and
   commit run in the background).
3. Per-step agreement: `Checkpointer.step_end` with nothing due (a 2-int gloo all-reduce,
   started at one step and collected at the next) at a step of `--step-ms`, vs the same
   loop without it. Goal: < 2%. Two kinds of step: "idle", the training thread blocked
   (as while it waits for a GPU), and "busy", both ranks spinning on the CPU (the worst
   case on a 2-core machine: gloo's threads compete with the training for the cores).

Rounds alternate which of baseline and subject goes first; medians are reported.

    .venv/bin/python bench/sharded.py [--size-mib 128] [--rounds 5] [--step-ms 20] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
TENSOR_MIB = 16


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    from stalwart.torch import Checkpointer
    from stalwart.torch.sharded import dcp_state

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    base = Path(args.dir)
    count = max(args.size_mib // TENSOR_MIB, 1)
    torch.manual_seed(rank)  # different shards per rank: a sharded model, not replicas
    model = torch.nn.ParameterList(
        torch.nn.Parameter(torch.randn(TENSOR_MIB * MIB // 4)) for _ in range(count)
    )
    wrapper = torch.nn.Module()
    wrapper.weights = model
    ckpt = Checkpointer(wrapper, ckpt_dir=base / "ckpt", interval_s=1e9, environ={})
    step = 0

    def fresh(name: str) -> Path:
        path = base / f"{name}-{step}"
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        dist.barrier()
        return path

    def timed(action) -> float:  # type: ignore[no-untyped-def]
        os.sync()
        dist.barrier()
        started = time.perf_counter()
        action()
        dist.barrier()
        return time.perf_counter() - started

    raw, sync, stall = [], [], []
    for round_ in range(args.rounds):
        step += 1
        bare = fresh("bare")
        plan = [
            ("raw", lambda bare=bare: dcp_save(dcp_state(wrapper, None), checkpoint_id=bare)),
            ("sync", lambda step=step: ckpt.save(step, wait=True)),
        ]
        for name, action in plan if round_ % 2 == 0 else plan[::-1]:
            (raw if name == "raw" else sync).append(timed(action))
        step += 1
        started = time.perf_counter()
        ckpt.save(step)  # asynchronous: returns once the state is copied
        stall.append(time.perf_counter() - started)
        ckpt.wait()
        dist.barrier()

    def loop(with_step_end: bool, busy: bool) -> float:
        nonlocal step
        dist.barrier()
        started = time.perf_counter()
        for _ in range(args.steps):
            deadline = time.perf_counter() + args.step_ms / 1000
            if busy:
                while time.perf_counter() < deadline:
                    pass
            else:
                time.sleep(args.step_ms / 1000)
            step += 1
            if with_step_end:
                ckpt.step_end(step)
        dist.barrier()
        return (time.perf_counter() - started) / args.steps

    steps: dict[tuple[bool, bool], list[float]] = {}
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for busy in (False, True):
            for with_step_end in order:
                steps.setdefault((busy, with_step_end), []).append(loop(with_step_end, busy))
    ckpt.close()
    if rank == 0:
        median = statistics.median
        result = {
            "size_mib_per_rank": count * TENSOR_MIB,
            "ranks": dist.get_world_size(),
            "raw_dcp_save_s": median(raw),
            "sharded_commit_s": median(sync),
            "commit_over_raw": median(sync) / median(raw),
            "async_stall_s": median(stall),
            "async_stall_over_sync": median(stall) / median(sync),
            "step_s": args.step_ms / 1000,
            "step_end_overhead_idle": median(steps[False, True]) / median(steps[False, False]) - 1,
            "step_end_overhead_busy": median(steps[True, True]) / median(steps[True, False]) - 1,
        }
        print(json.dumps(result, indent=2), flush=True)
    dist.barrier()
    os._exit(0)  # as tests/trainers/ddp_train.py: gloo teardown can deadlock under load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=128, help="per rank")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    if "RANK" in os.environ:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-sharded-") as scratch:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
        argv += ["--nproc-per-node=2", __file__, "--size-mib", str(args.size_mib)]
        argv += ["--rounds", str(args.rounds), "--step-ms", str(args.step_ms)]
        argv += ["--steps", str(args.steps), "--dir", args.dir or scratch]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
