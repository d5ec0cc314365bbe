"""Trainer-side costs of stalwart.torch.Checkpointer, each as a ratio against a baseline
measured in the same run.

1. Training stall of an asynchronous save (snapshot to CPU memory, then write and commit
   in a background thread) vs a synchronous save of the same state (write and commit
   while training waits). Goal: <= 0.125. The first asynchronous save also allocates its
   snapshot buffers; it is reported apart ("cold"), the ratio uses the later ones.
2. Step-time overhead of the per-step calls at a 10 ms step, under a supervisor-like
   environment (advice file, notify socket): `client.step` + `client.should_checkpoint`,
   and `Checkpointer.step_end` (which adds signal flags and a background poll), vs none.
   Measured twice: the cost of a call in a tight loop, as a share of a 10 ms step; and a
   loop of 10 ms steps (a spin until a deadline, so the work per step is fixed and any
   overhead adds to it), which also shows scheduling noise. Goal: < 1%.

3. The training step that contains a save (issue 18): a real MLP's forward, backward and
   AdamW step; `save()` at the step's end, then the next step, against the same step with
   no save. The extra wall time is measured for a synchronous save, an asynchronous save
   with `snapshot="block"` (everything copied before returning) and with
   `snapshot="overlap"` (parameters and moments copied while the next forward and
   backward run), against a bare `memcpy` of the same bytes into kept buffers done
   before the step. Goals: overlap/memcpy <= 0.7, overlap/sync <= 0.10, the first
   overlapped save within 1.5x of the later ones.

Rounds alternate which of baseline and subject goes first; medians are reported.
`os.sync()` runs before each save so earlier writeback does not land on the next one.

    .venv/bin/python bench/async_save.py [--size-mib 512] [--rounds 5] [--step-ms 10]
                                         [--steps 500] [--loop-rounds 5] [--dir DIR]
                                         [--parts step,stall,loop] [--param-mib 128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stalwart.client import Client
from stalwart.torch import Checkpointer
from stalwart.torch.tree import copy_into

MIB = 1024 * 1024
TENSOR_MIB = 16
CALLS = 20_000
"""Calls per round of the tight-loop cost measurement."""


class Blob(torch.nn.Module):
    """`size_mib` of float32 parameters in 16 MiB tensors (a model's worth of weights)."""

    def __init__(self, size_mib: int) -> None:
        super().__init__()
        count, rest = divmod(size_mib, TENSOR_MIB)
        sizes = [TENSOR_MIB] * count + ([rest] if rest else [])
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(mib * MIB // 4)) for mib in sizes
        )


def bench_stall(size_mib: int, rounds: int, base: Path) -> dict[str, float]:
    model = Blob(size_mib)
    async_ckpt = Checkpointer(model, store=None, ckpt_dir=base / "async", environ={})
    sync_ckpt = Checkpointer(
        model, ckpt_dir=base / "sync", environ={}, async_save=False, exit_signals=()
    )
    stalls: dict[str, list[float]] = {"async": [], "sync": []}
    persists: list[float] = []

    def run_async(step: int) -> None:
        os.sync()
        started = time.perf_counter()
        async_ckpt.save(step)
        # No optimizer here: the next step_end waits for the overlapped copy (training's
        # whole stall); not counting it would measure only the small state's copy.
        async_ckpt.step_end(step)
        stalls["async"].append(time.perf_counter() - started)
        outcome = async_ckpt.wait()
        assert outcome is not None
        persists.append(outcome.persist_s)
        shutil.rmtree(outcome.path)

    def run_sync(step: int) -> None:
        os.sync()
        started = time.perf_counter()
        sync_ckpt.save(step)
        stalls["sync"].append(time.perf_counter() - started)
        assert sync_ckpt.last_saved is not None
        shutil.rmtree(sync_ckpt.last_saved.path)

    try:
        # As in a training loop, step_end has run before the first save is due: it
        # allocates and touches the buffers in the background (a second here, for steps).
        async_ckpt.step_end(0)
        time.sleep(1.0)
        run_async(1)
        cold = stalls["async"].pop()
        persists.pop()
        for step in range(2, rounds + 2):
            order: list[Callable[[int], None]] = [run_async, run_sync]
            for action in order if step % 2 else reversed(order):
                action(step)
    finally:
        async_ckpt.close()
        sync_ckpt.close()
    return {
        "cold_s": cold,
        "async_s": statistics.median(stalls["async"]),
        "sync_s": statistics.median(stalls["sync"]),
        "async_min_s": min(stalls["async"]),
        "sync_min_s": min(stalls["sync"]),
        "persist_s": statistics.median(persists),
    }


class Mlp(torch.nn.Module):
    """`param_mib` of float32 weights in square layers, with a real forward and backward."""

    def __init__(self, param_mib: int, width: int = 2048) -> None:
        super().__init__()
        layers = max(1, param_mib * MIB // (4 * width * width))
        self.layers = torch.nn.Sequential(
            *(torch.nn.Linear(width, width, bias=False) for _ in range(layers))
        )
        self.norm = torch.nn.BatchNorm1d(width)  # buffers that the forward updates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.layers(self.norm(x)))


def bench_step(param_mib: int, rounds: int, base: Path) -> dict[str, float]:
    """Extra seconds of the step containing a save, per arm (medians), and the first save."""
    torch.manual_seed(0)
    model = Mlp(param_mib)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randn(64, 2048)

    def step() -> None:
        loss = model(batch).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()  # Adam's moments exist from here on
    tensors = [*model.state_dict().values()] + [
        t for state in optimizer.state.values() for t in state.values() if t.numel() > 1
    ]
    copies = [torch.empty_like(t) for t in tensors]
    for target, tensor in zip(copies, tensors, strict=True):
        copy_into(target, tensor)  # touched once: the memcpy arm reuses its buffers too
    state_bytes = sum(t.numel() * t.element_size() for t in tensors)

    def ckpt(name: str, **kwargs: object) -> Checkpointer:
        return Checkpointer(
            model, optimizer, ckpt_dir=base / name, environ={}, exit_signals=(), **kwargs
        )

    marks: dict[str, float] = {}
    optimizer.register_step_pre_hook(lambda *_: marks.__setitem__("hooks", time.perf_counter()))
    ckpts = {
        "sync": ckpt("sync", async_save=False),
        "block": ckpt("block", snapshot="block"),
        "overlap": ckpt("overlap", snapshot="overlap"),
    }
    optimizer.register_step_pre_hook(lambda *_: marks.__setitem__("step", time.perf_counter()))
    # A training loop calls step_end every step: the first call allocates and touches the
    # snapshot buffers in the background, and the steps before the first save hide it.
    for checkpointer in ckpts.values():
        checkpointer.step_end(2)
    for _ in range(3):
        step()
    extra: dict[str, list[float]] = {name: [] for name in ("memcpy", *ckpts)}
    blocked: dict[str, list[float]] = {name: [] for name in ckpts}
    """Time training waited on the Checkpointer: save() returning, plus its step pre-hook."""
    bare: list[float] = []
    first: dict[str, float] = {}

    def timed(before: Callable[[], None]) -> float:
        os.sync()
        started = time.perf_counter()
        before()
        step()
        return time.perf_counter() - started

    def memcpy() -> None:
        for target, tensor in zip(copies, tensors, strict=True):
            copy_into(target, tensor)

    def arm(name: str, n: int) -> float:
        bare.append(timed(lambda: None))
        if name == "memcpy":
            return timed(memcpy) - bare[-1]
        checkpointer = ckpts[name]

        def save() -> None:
            started = time.perf_counter()
            checkpointer.save(n)
            marks["saved"] = time.perf_counter() - started

        took = timed(save) - bare[-1]
        blocked[name].append(marks["saved"] + marks["step"] - marks["hooks"])
        outcome = checkpointer.wait()
        assert outcome is not None and checkpointer.torn_snapshots == 0
        shutil.rmtree(outcome.path)
        return took

    try:
        for name in ("block", "overlap"):
            first[name] = arm(name, 0)
        names = list(extra)
        for n in range(1, rounds + 1):
            for name in names[n % len(names) :] + names[: n % len(names)]:
                extra[name].append(arm(name, n))
    finally:
        for checkpointer in ckpts.values():
            checkpointer.close()
    result = {name: statistics.median(values) for name, values in extra.items()}
    result.update({f"blocked_{k}": statistics.median(v) for k, v in blocked.items() if v})
    result.update({f"first_{name}": value for name, value in first.items()})
    result["step"] = statistics.median(bare)
    result["state_bytes"] = float(state_bytes)
    return result


def print_step(figures: dict[str, float], rounds: int) -> None:
    memcpy_s, sync_s = figures["memcpy"], figures["sync"]
    print(
        f"training step containing a save: {figures['state_bytes'] / MIB:.0f} MiB of "
        f"parameters + AdamW moments + buffers, step {1000 * figures['step']:.1f} ms without a "
        f"save, {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs, medians of "
        f"{rounds} rounds; extra wall time of the step:"
    )
    for name, label in (
        ("memcpy", "bare memcpy of the same bytes"),
        ("sync", "sync save"),
        ("block", 'async, snapshot="block"'),
        ("overlap", 'async, snapshot="overlap"'),
    ):
        print(
            f"  {label:32} {1000 * figures[name]:8.1f} ms   /memcpy {figures[name] / memcpy_s:6.3f}"
            f"   /sync {figures[name] / sync_s:6.3f}"
            + (
                f"   (blocked {1000 * figures[f'blocked_{name}']:.1f} ms)"
                if f"blocked_{name}" in figures
                else ""
            )
        )
    for name in ("block", "overlap"):
        print(
            f"  first {name} save (allocates)    {1000 * figures[f'first_{name}']:8.1f} ms   "
            f"first/later {figures[f'first_{name}'] / figures[name]:6.2f}"
        )
    print(
        f"  goals: overlap/memcpy {figures['overlap'] / memcpy_s:.3f} (<= 0.7), overlap/sync "
        f"{figures['overlap'] / sync_s:.3f} (<= 0.10), first/later overlap "
        f"{figures['first_overlap'] / figures['overlap']:.2f} (<= 1.5)"
    )
    print(
        f"  training blocked (save() + pre-hook wait): overlap/memcpy "
        f"{figures['blocked_overlap'] / memcpy_s:.3f}, overlap/sync "
        f"{figures['blocked_overlap'] / figures['blocked_sync']:.3f}, block/sync "
        f"{figures['blocked_block'] / figures['blocked_sync']:.3f}"
    )


def spin_until(deadline: float) -> None:
    while time.perf_counter() < deadline:
        pass


def bench_loop(step_s: float, steps: int, rounds: int, runtime: Path) -> dict[str, float]:
    """Median seconds per step for: no calls, the client's two calls, Checkpointer.step_end."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(runtime / "notify.sock"))
    advice = runtime / "advice.json"
    advice.write_text(json.dumps({"interval_s": 1e9, "checkpoint_now": 0, "drain": False}))
    env = {
        "STALWART_NOTIFY_SOCKET": str(runtime / "notify.sock"),
        "STALWART_ADVICE_FILE": str(advice),
        "STALWART_CKPT_DIR": str(runtime / "ck"),
    }
    client = Client(env)
    ckpt = Checkpointer(torch.nn.Linear(4, 4), environ=env, exit_signals=())

    def none(step: int) -> None:
        pass

    def client_calls(step: int) -> None:
        client.step(step)
        client.should_checkpoint(step)

    arms: dict[str, Callable[[int], None]] = {
        "none": none,
        "client": client_calls,
        "step_end": ckpt.step_end,
    }
    per_step: dict[str, list[float]] = {name: [] for name in arms}
    per_call: dict[str, list[float]] = {name: [] for name in arms}
    try:
        for _ in range(rounds):
            for name, call in arms.items():
                started = time.perf_counter()
                for step in range(CALLS):
                    call(step)
                per_call[name].append((time.perf_counter() - started) / CALLS)
                drain(notify)
        for round_ in range(rounds):
            names = list(arms)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in names:
                call = arms[name]
                started = time.perf_counter()
                for step in range(steps):
                    spin_until(time.perf_counter() + step_s)
                    call(step)
                per_step[name].append((time.perf_counter() - started) / steps)
                drain(notify)
    finally:
        ckpt.close()
        client.close()
        notify.close()
    return {
        **{name: statistics.median(values) for name, values in per_step.items()},
        **{f"{name}_call": statistics.median(values) for name, values in per_call.items()},
    }


def drain(notify: socket.socket) -> None:
    """Read the heartbeats sent so far, so the socket never fills."""
    while True:
        try:
            notify.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--loop-rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where checkpoints are written")
    parser.add_argument("--parts", default="step,stall,loop", help="which measurements")
    parser.add_argument("--param-mib", type=int, default=128, help="the step part's weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; fewer than the cores leaves "
        "one to the background copy and write, as a GPU box's many cores would)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="stalwart-bench-", dir=args.dir))
    try:
        if "step" in parts:
            print_step(bench_step(args.param_mib, args.rounds, base / "step"), args.rounds)
            print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
        if not parts & {"stall", "loop"}:
            return
        stall = bench_stall(args.size_mib, args.rounds, base)
        loop = bench_loop(args.step_ms / 1000, args.steps, args.loop_rounds, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratio = stall["async_s"] / stall["sync_s"]
    print(
        f"state {args.size_mib} MiB of float32 tensors, {torch.get_num_threads()} torch "
        f"threads, medians of {args.rounds} rounds; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)"
    )
    print(f"sync save, training blocked        {1000 * stall['sync_s']:8.1f} ms")
    print(f"async save, training blocked       {1000 * stall['async_s']:8.1f} ms")
    print(f"  async/sync stall               {ratio:8.3f}  (goal <= 0.10)")
    print(
        f"  fastest rounds: async {1000 * stall['async_min_s']:.1f} ms, sync "
        f"{1000 * stall['sync_min_s']:.1f} ms, ratio "
        f"{stall['async_min_s'] / stall['sync_min_s']:.3f} (least disturbed by other load)"
    )
    print(f"async save, first (prepared)       {1000 * stall['cold_s']:8.1f} ms")
    print(f"async save, until durable          {1000 * stall['persist_s']:8.1f} ms")
    none_s = loop["none"]
    print(
        f"step loop at {args.step_ms:g} ms/step, {args.steps} steps x {args.loop_rounds} rounds: "
        f"{1000 * none_s:.4f} ms/step without calls"
    )
    step_s = args.step_ms / 1000
    for name, label in (("client", "client.step + should_checkpoint"), ("step_end", "step_end")):
        cost_s = loop[f"{name}_call"] - loop["none_call"]
        print(
            f"  {label:32} {1e6 * cost_s:6.2f} us/call in a tight loop: "
            f"{100 * cost_s / step_s:6.3f}% of a step (goal < 1%)"
        )
        print(
            f"  {'':32} in the step loop: {100 * (loop[name] / none_s - 1):+6.3f}% per step "
            "(includes scheduling noise)"
        )


if __name__ == "__main__":
    main()
