"""A small training job that crashes at random: the bundled demo trainer.

It fits y = 3x - 2 with SGD in pure Python, saves a checkpoint (weights, RNG
state, step) every CKPT_EVERY steps into $STALWART_CKPT_DIR, resumes from
$STALWART_RESUME_FROM or its newest checkpoint, and dies at random steps in
the ways real jobs die (a CUDA error, a SIGKILL, a plain crash). Because the
RNG state is checkpointed too, the final weights equal an uninterrupted run's.

Environment knobs: DEMO_STEPS (default 400), DEMO_CKPT_EVERY (25),
DEMO_CRASH_PROB per step (0.01), DEMO_MAX_CRASHES (attempts that may crash, 6),
DEMO_STEP_S (seconds of "work" per step, 0.005).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("step-*.json"))
    return found[-1] if found else None


def save(ckpt_dir: Path, step: int, w: float, b: float, rng: random.Random) -> None:
    """Write-then-rename, with fsyncs: a crash leaves the old file or the new, never half."""
    final = ckpt_dir / f"step-{step:09d}.json"
    tmp = ckpt_dir / f".{final.name}.{os.getpid()}.tmp"
    version, internal, gauss_next = rng.getstate()
    state = {"step": step, "w": w, "b": b, "rng": [version, list(internal), gauss_next]}
    with tmp.open("w") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(ckpt_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def crash(rng: random.Random, step: int) -> None:
    way = rng.choice(["cuda", "sigkill", "exception"])
    print(f"injecting a crash at step {step}: {way}", flush=True)
    if way == "cuda":
        print(
            "RuntimeError: CUDA error: an illegal memory access was encountered (injected)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
    if way == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure at step {step}")


def main() -> int:
    steps = int(os.environ.get("DEMO_STEPS", "400"))
    every = int(os.environ.get("DEMO_CKPT_EVERY", "25"))
    crash_prob = float(os.environ.get("DEMO_CRASH_PROB", "0.01"))
    max_crashes = int(os.environ.get("DEMO_MAX_CRASHES", "6"))
    step_s = float(os.environ.get("DEMO_STEP_S", "0.005"))
    attempt = int(os.environ.get("STALWART_ATTEMPT", "0"))
    ckpt_dir = Path(os.environ.get("STALWART_CKPT_DIR", "checkpoints"))
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    resume = os.environ.get("STALWART_RESUME_FROM") or None
    path = Path(resume) if resume else newest_checkpoint(ckpt_dir)
    data_rng = random.Random(1234)
    w, b, start = 0.0, 0.0, 0
    if path is not None and path.is_file():
        state = json.loads(path.read_text())
        w, b, start = state["w"], state["b"], state["step"]
        version, internal, gauss_next = state["rng"]
        data_rng.setstate((version, tuple(internal), gauss_next))
        print(f"attempt {attempt}: resumed from {path.name} (step {start})", flush=True)
    else:
        print(f"attempt {attempt}: starting from scratch", flush=True)

    chaos = random.Random(f"{os.environ.get('STALWART_RUN_ID', '')}:{attempt}")
    lr = 0.05
    for step in range(start + 1, steps + 1):
        x = data_rng.uniform(-1, 1)
        y = 3 * x - 2 + data_rng.gauss(0, 0.1)
        error = (w * x + b) - y
        w -= lr * error * x
        b -= lr * error
        time.sleep(step_s)
        if attempt < max_crashes and chaos.random() < crash_prob:
            crash(chaos, step)
        if step % every == 0 or step == steps:
            save(ckpt_dir, step, w, b, data_rng)
    print(f"done: w={w:.6f} b={b:.6f}", flush=True)
    (ckpt_dir / "final.json").write_text(json.dumps({"w": w, "b": b}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
