"""The prepared GPU check (issue 18, item 6): one short script for a machine with CUDA.

Parts, each reported RAN (ran and passed), SKIPPED (why) or FAILED, then a summary table:

a. demo   The chaos demo (`make demo`'s job, examples/train_tiny.py): once standalone and
          uninterrupted, once under `stalwart run` with chaos SIGKILLs; the final weights and
          optimizer state must be equal bit for bit. Deterministic algorithms are on
          (train_tiny.py sets them; CUBLAS_WORKSPACE_CONFIG=:4096:8 is passed). The job runs
          on the GPU only if train_tiny.py takes a `--device` option; today it does not
          (and reads no device variable), so the demo runs on CPU and says so. It runs by
          default where CUDA is available; on a CPU-only machine only with --demo (about a
          minute on 2 cores).
b. roundtrip  stalwart.torch.Checkpointer save, then restore into a fresh model, optimizer
          and scheduler, compared bitwise (tensors, optimizer state, scheduler, RNG streams),
          then two more training steps on each, compared bitwise:
            cpu->cpu     CPU state restored on CPU (runs everywhere)
            cuda->cuda   CUDA state restored on the GPU (map_location="cuda")
            cuda->cpu    CUDA state restored onto CPU (map_location="cpu"; state only)
c. nvml   stalwart's ResourceSampler (host/resources.py) samples GPUs through NVML when
          pynvml is importable: what it saw, and that 1 GiB allocated shows up in it.
d. stall  The training stall of an asynchronous save against a synchronous save of the same
          state (parameters and SGD momentum, on the device), as ratios in one run, with a
          bare copy of the same bytes to (pinned) CPU memory as a floor. The stall of a save
          is the extra wall time of `save()` plus the next optimizer step (an overlapped
          snapshot blocks there) over a step without a save. The first async save
          allocates its buffers and is reported apart.

Exit 0 when every part that ran passed, 1 otherwise. Bounded: about 3 minutes on a GPU
machine by default (the demo is the longest part), under a minute with --quick.

    .venv/bin/python bench/gpu_check.py [--quick] [--demo | --no-demo] [--size-mib N]
                                        [--rounds N] [--parts a,b,c,d] [--dir DIR] [--keep]
                                        [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stalwart.host.resources import ResourceSampler
from stalwart.journal import Journal
from stalwart.torch import Checkpointer

ROOT = Path(__file__).resolve().parent.parent
TRAIN_TINY = ROOT / "examples" / "train_tiny.py"
MIB = 1024 * 1024
TENSOR_MIB = 16
CUBLAS = ":4096:8"


@dataclass
class Result:
    part: str
    status: str  # RAN | SKIPPED | FAILED
    detail: str
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


class Failed(Exception):
    """A check that ran and did not hold; the message says what differed."""


def cuda_ok() -> bool:
    return torch.cuda.is_available()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- bitwise comparison ------------------------------------------------------------------


def leaves(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, comparable value) for every leaf; tensors as dtype, shape and raw bytes."""
    if isinstance(tree, torch.Tensor):
        flat = tree.detach().cpu().contiguous().reshape(-1)
        yield path, (str(tree.dtype), tuple(tree.shape), flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from leaves(tree[key], f"{path}/{key}")
    elif isinstance(tree, list | tuple):
        for index, item in enumerate(tree):
            yield from leaves(item, f"{path}/{index}")
    else:
        yield path, repr(tree)


def differences(expected: Any, actual: Any) -> list[str]:
    want, got = dict(leaves(expected)), dict(leaves(actual))
    diff = [key for key in want if want[key] != got.get(key)]
    diff += [key for key in got if key not in want]
    return diff


def snapshot(tree: Any) -> Any:
    """A deep CPU copy, so later training does not change it."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {key: snapshot(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(snapshot(item) for item in tree)
    return tree


def expect_same(what: str, expected: Any, actual: Any) -> None:
    diff = differences(expected, actual)
    if diff:
        raise Failed(f"{what}: {len(diff)} leaves differ, e.g. {diff[:3]}")


# -- a. the chaos demo -------------------------------------------------------------------


def part_demo(args: argparse.Namespace, work: Path) -> Result:
    if args.no_demo:
        return Result("a. demo", "SKIPPED", "--no-demo")
    if not args.demo and not cuda_ok():
        return Result(
            "a. demo",
            "SKIPPED",
            "no CUDA; on CPU the chaos demo takes about a minute: --demo runs it",
        )
    takes_device = "--device" in TRAIN_TINY.read_text(encoding="utf-8")
    device = "cuda" if takes_device and cuda_ok() else "cpu"
    why = (
        "on the GPU (--device cuda)"
        if device == "cuda"
        else "on CPU: examples/train_tiny.py has no device option"
        if not takes_device
        else "on CPU: no CUDA"
    )
    if args.quick:
        steps, model_args = 300, ["--d-model", "32", "--layers", "1"]
        kill_s, kills, timeout_s = (2.0, 4.0), 2, 150
    else:
        steps, model_args = 600, []  # configs/demo.yaml's job
        kill_s, kills, timeout_s = (6.0, 12.0), 4, 300
    job = [sys.executable, str(TRAIN_TINY), "--steps", str(steps), *model_args]
    if device == "cuda":
        job += ["--device", "cuda"]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(work), "CUBLAS_WORKSPACE_CONFIG": CUBLAS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("STALWART_CKPT_DIR", None)

    reference_out = work / "reference.json"
    subprocess.run(
        [*job, "--ckpt-dir", str(work / "reference"), "--out", str(reference_out)],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout_s,
    )
    reference = json.loads(reference_out.read_text())

    config = {
        "name": "gpu-check-demo",
        "command": [
            *job,
            "--log",
            str(work / "steps.jsonl"),
            "--out",
            str(work / "final.json"),
        ],
        "cwd": str(ROOT),
        "state_dir": str(work / "state"),
        "checkpoint": {
            "dir": str(work / "checkpoints"),
            "keep_last": 3,
            "interval": {
                "fixed_interval_s": 1 if args.quick else 2,
                "prior_mtbf_s": 20,
                "half_life_s": 600,
                "min_interval_s": 0.5 if args.quick else 1,
                "max_interval_s": 30,
            },
        },
        "restart": {"backoff_initial_s": 0.2, "backoff_max_s": 1},
        "chaos": {
            "enabled": True,
            "kill_after_min_s": kill_s[0],
            "kill_after_max_s": kill_s[1],
            "max_kills": kills,
            "seed": 7,
        },
    }
    config_path = work / "demo.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_path = work / "stalwart-run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stalwart", "run", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # a drain: the trainer dies with it
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise Failed(f"stalwart run did not finish within {timeout_s} s") from None

    with Journal(work / "state" / "journal.sqlite") as journal:
        (run,) = journal.runs("gpu-check-demo")
        attempts = journal.attempts(run.run_id)
    injected = sum("chaos" in (a.reason or "") for a in attempts)
    final_path = work / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    same = all(final.get(key) == reference[key] for key in ("weights_sha256", "optimizer_sha256"))
    figures = {
        "device": device,
        "steps": steps,
        "attempts": len(attempts),
        "chaos_kills": injected,
        "stalwart_exit": code,
        "bitwise_equal": same,
        "final_loss": final.get("final_loss"),
        "reference_loss": reference["final_loss"],
    }
    detail = (
        f"{why}; {steps} steps, {len(attempts)} attempts, {injected} chaos kills, "
        f"exit {code}, final weights+optimizer {'==' if same else '!='} uninterrupted, bitwise"
    )
    if code != 0 or not same or injected == 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        print("\n".join(f"   | {line}" for line in tail))
        raise Failed(detail + ("" if injected else " (no kill was injected)"))
    return Result("a. demo", "RAN", detail, figures=figures)


# -- b. the Checkpointer round trip ------------------------------------------------------


def make_job(device: str, seed: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.BatchNorm1d(256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 16)
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, steps: int) -> None:
    device = next(model.parameters()).device
    for _ in range(steps):
        x = torch.randn(32, 64, device=device)  # the device's generator: restored or not
        y = torch.randn(32, 16, device=device)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def rng_states() -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state()}
    if cuda_ok() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Any:
    return snapshot(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
    )


def part_roundtrip(source: str, target: str, work: Path) -> Result:
    name = f"b. roundtrip {source}->{target}"
    if "cuda" in (source, target) and not cuda_ok():
        return Result(name, "SKIPPED", "no CUDA")
    quiet = {"environ": {}, "save_signals": (), "exit_signals": ()}
    model, optimizer, scheduler = make_job(source, seed=0)
    train(model, optimizer, scheduler, 3)
    expected, expected_rng = full_state(model, optimizer, scheduler), rng_states()
    folder = work / f"roundtrip-{source}-{target}"
    with Checkpointer(model, optimizer, scheduler, ckpt_dir=folder, **quiet) as ck:
        ck.save(3)  # asynchronous: snapshot, then written in the background
        outcome = ck.wait()
    assert outcome is not None
    train(model, optimizer, scheduler, 2)  # the run goes on past the checkpoint
    continued = full_state(model, optimizer, scheduler)
    torch.rand(1)  # move the generators on, so restoring them is seen
    if "cuda" in rng_states():
        torch.rand(1, device="cuda")

    fresh, fresh_opt, fresh_sched = make_job(target, seed=1)
    restorer = Checkpointer(
        fresh, fresh_opt, fresh_sched, map_location=target, ckpt_dir=folder / "unused", **quiet
    )
    with restorer:
        step = restorer.restore(outcome.path)
    if step != 3:
        raise Failed(f"restore returned step {step}, saved 3")
    misplaced = [
        key
        for key, tensor in [
            *fresh.state_dict().items(),
            *fresh_opt.state_dict()["state"][0].items(),
        ]
        if isinstance(tensor, torch.Tensor)
        and tensor.device.type != target
        and not (key == "step" and tensor.device.type == "cpu")  # AdamW keeps `step` on CPU
    ]
    if misplaced:
        raise Failed(f"restored tensors not on {target}: {misplaced[:3]}")
    expect_same("restored state", expected, full_state(fresh, fresh_opt, fresh_sched))
    got_rng = rng_states()
    expect_same("torch CPU RNG", expected_rng["torch"], got_rng["torch"])
    checks = "model, optimizer, scheduler, CPU RNG"
    if source == target:
        if "cuda" in expected_rng:
            expect_same("CUDA RNG", expected_rng["cuda"], got_rng["cuda"])
            checks += ", CUDA RNG"
        train(fresh, fresh_opt, fresh_sched, 2)
        expect_same(
            "2 steps after the resume", continued, full_state(fresh, fresh_opt, fresh_sched)
        )
        checks += "; 2 more steps equal the uninterrupted run's"
    size = outcome.size_bytes
    return Result(
        name,
        "RAN",
        f"{size / 1024:.0f} KiB checkpoint, restored with map_location={target!r}: "
        f"{checks}, bitwise",
        figures={"bytes": size},
    )


# -- c. NVML through the ResourceSampler -------------------------------------------------


def part_nvml(work: Path) -> Result:
    name = "c. nvml"
    if importlib.util.find_spec("pynvml") is None:
        return Result(name, "SKIPPED", "NVML absent: pynvml is not importable (nvidia-ml-py)")
    import pynvml  # type: ignore[import-not-found, unused-ignore]

    try:
        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception as exc:
        return Result(name, "SKIPPED", f"pynvml importable, NVML does not initialise: {exc}")
    sampler = ResourceSampler(work)
    try:
        before = sampler.sample(os.getpid())
        if not before.gpus:
            raise Failed(f"NVML initialises (driver {driver}) but the sampler saw no GPU")
        grown = None
        if cuda_ok():
            block = torch.empty(1024 * MIB, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
            after = sampler.sample(os.getpid())
            del block
            torch.cuda.empty_cache()
            grown = sum(g.memory_used_bytes for g in after.gpus) - sum(
                g.memory_used_bytes for g in before.gpus
            )
    finally:
        sampler.close()
    seen = "; ".join(
        f"GPU {g.index}: {g.memory_used_bytes / MIB:.0f}/{g.memory_total_bytes / MIB:.0f} MiB "
        f"used, {g.utilization_percent:.0f}% busy"
        for g in before.gpus
    )
    detail = f"driver {driver}, {len(before.gpus)} GPU(s): {seen}"
    if grown is not None:
        detail += f"; 1 GiB allocated -> used +{grown / MIB:.0f} MiB"
        if grown < 512 * MIB:
            raise Failed(detail + " (expected about +1024 MiB)")
    return Result(
        name,
        "RAN",
        detail,
        figures={"gpus": [vars(g) for g in before.gpus], "grown_bytes": grown},
    )


# -- d. save stall -----------------------------------------------------------------------


class Blob(nn.Module):
    def __init__(self, size_mib: int, device: torch.device) -> None:
        super().__init__()
        count, rest = divmod(size_mib, TENSOR_MIB)
        sizes = [TENSOR_MIB] * count + ([rest] if rest else [])
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(mib * MIB // 4, device=device)) for mib in sizes
        )


def part_stall(args: argparse.Namespace, work: Path) -> Result:
    device = torch.device("cuda" if cuda_ok() else "cpu")
    size_mib = args.size_mib or (64 if args.quick else 256)
    rounds = args.rounds or (2 if args.quick else 4)
    model = Blob(size_mib, device)
    for param in model.parameters():
        param.grad = torch.full_like(param, 1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    optimizer.step()  # momentum buffers exist: the optimizer state is as big as the model

    def step() -> None:
        optimizer.step()
        sync(device)

    quiet = {"environ": {}, "save_signals": (), "exit_signals": ()}
    async_ck = Checkpointer(model, optimizer, ckpt_dir=work / "async", **quiet)
    sync_ck = Checkpointer(model, optimizer, ckpt_dir=work / "sync", async_save=False, **quiet)
    tensors = [p for p in model.parameters()] + [
        s["momentum_buffer"] for s in optimizer.state.values()
    ]
    copies = [torch.empty_like(t, device="cpu", pin_memory=device.type == "cuda") for t in tensors]
    found: dict[str, list[float]] = {k: [] for k in ("base", "async", "returned", "sync", "copy")}
    found["persist"] = []

    def base() -> float:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started

    def run_async(n: int) -> None:
        os.sync()
        started = time.perf_counter()
        async_ck.save(n)
        found["returned"].append(time.perf_counter() - started)
        step()
        found["async"].append(time.perf_counter() - started - base())
        outcome = async_ck.wait()
        assert outcome is not None
        found["persist"].append(outcome.persist_s)
        shutil.rmtree(outcome.path)

    def run_sync(n: int) -> None:
        os.sync()
        started = time.perf_counter()
        sync_ck.save(n)
        step()
        found["sync"].append(time.perf_counter() - started - base())
        assert sync_ck.last_saved is not None
        shutil.rmtree(sync_ck.last_saved.path)

    def run_copy(n: int) -> None:
        started = time.perf_counter()
        for source, copy in zip(tensors, copies, strict=True):
            copy.copy_(source, non_blocking=device.type == "cuda")
        sync(device)
        found["copy"].append(time.perf_counter() - started)

    try:
        for _ in range(3):
            found["base"].append(base())
        run_async(0)
        cold = found["async"].pop()
        found["returned"].pop()
        found["persist"].pop()
        run_sync(0)
        found["sync"].pop()
        run_copy(0)
        found["copy"].pop()
        for n in range(1, rounds + 1):
            order: list[Callable[[int], None]] = [run_async, run_sync, run_copy]
            for action in order if n % 2 else reversed(order):
                action(n)
    finally:
        async_ck.close()
        sync_ck.close()
    med = {key: statistics.median(values) for key, values in found.items() if values}
    state_mib = 2 * size_mib
    figures = {
        "device": str(device),
        "state_mib": state_mib,
        "rounds": rounds,
        "cold_async_stall_s": cold,
        **{f"{key}_s": value for key, value in med.items()},
        "async_over_sync": med["async"] / med["sync"],
        "async_over_copy": med["async"] / med["copy"],
        "cold_over_warm": cold / med["async"],
    }
    detail = (
        f"{device.type}, {state_mib} MiB (params + momentum), median of {rounds}: async stall "
        f"{1000 * med['async']:.1f} ms (save() returned after {1000 * med['returned']:.1f} ms; "
        f"first {1000 * cold:.1f} ms), sync save {1000 * med['sync']:.1f} ms, bare copy "
        f"{1000 * med['copy']:.1f} ms, persist {1000 * med['persist']:.0f} ms; "
        f"async/sync {figures['async_over_sync']:.3f} (goal <= 0.10: "
        f"{'met' if figures['async_over_sync'] <= 0.10 else 'not met'}), "
        f"async/copy {figures['async_over_copy']:.2f}, first/later {figures['cold_over_warm']:.2f}"
    )
    if figures["async_over_sync"] >= 1.0:
        raise Failed(detail + " (an async save stalled as long as a sync one)")
    return Result("d. stall", "RAN", detail, figures=figures)


# -- driver ------------------------------------------------------------------------------


def guarded(name: str, action: Callable[[], Result]) -> Result:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        result = action()
    except Failed as exc:
        result = Result(name, "FAILED", str(exc))
    except Exception as exc:
        traceback.print_exc()
        result = Result(name, "FAILED", f"{type(exc).__name__}: {exc}")
    result.part = name
    result.seconds = time.perf_counter() - started
    print(f"   {result.status}: {result.detail}", flush=True)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 rounds")
    demo = parser.add_mutually_exclusive_group()
    demo.add_argument("--demo", action="store_true", help="run the chaos demo without CUDA too")
    demo.add_argument("--no-demo", action="store_true", help="skip the chaos demo")
    parser.add_argument("--size-mib", type=int, help="stall: model MiB (default 256, quick 64)")
    parser.add_argument("--rounds", type=int, help="stall: rounds (default 4, quick 2)")
    parser.add_argument("--dir", help="where to write checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--parts", default="abcd", help="which parts, e.g. a,d (default all)")
    parser.add_argument("--json", help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS)  # before CUDA starts
    torch.use_deterministic_algorithms(True)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    gpu = torch.cuda.get_device_name(0) if cuda_ok() else "none"
    print(
        f"gpu_check{' --quick' if args.quick else ''}: torch {torch.__version__}, CUDA "
        f"{torch.version.cuda or '-'}, GPU {gpu}, {os.cpu_count()} CPUs, commit {commit or '?'}, "
        f"deterministic {torch.are_deterministic_algorithms_enabled()}, "
        f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.dir))
    started = time.perf_counter()
    try:
        parts: list[tuple[str, Callable[[], Result]]] = [
            ("a. demo", lambda: part_demo(args, work / "demo")),
            ("b. roundtrip cpu->cpu", lambda: part_roundtrip("cpu", "cpu", work)),
            ("b. roundtrip cuda->cuda", lambda: part_roundtrip("cuda", "cuda", work)),
            ("b. roundtrip cuda->cpu", lambda: part_roundtrip("cuda", "cpu", work)),
            ("c. nvml", lambda: part_nvml(work)),
            ("d. stall", lambda: part_stall(args, work / "stall")),
        ]
        (work / "demo").mkdir()
        wanted = set(args.parts.replace(",", ""))
        results = [guarded(name, action) for name, action in parts if name[0] in wanted]
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    width = max(len(r.part) for r in results)
    print(f"\n{'part':{width}}  {'status':7}  {'s':>6}  detail")
    for r in results:
        print(f"{r.part:{width}}  {r.status:7}  {r.seconds:6.1f}  {r.detail}")
    failed = [r.part for r in results if r.status == "FAILED"]
    print(
        f"{len(results) - len(failed)} of {len(results)} parts did not fail "
        f"({sum(r.status == 'RAN' for r in results)} ran, "
        f"{sum(r.status == 'SKIPPED' for r in results)} skipped) in {total:.0f} s; "
        f"exit {1 if failed else 0}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps([vars(r) for r in results], indent=2, default=str) + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
