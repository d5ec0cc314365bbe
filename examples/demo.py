"""`make demo`: a tiny transformer trained under stalwart while chaos kills it; what was recovered.

1. Reference: the same training job once, standalone and uninterrupted.
2. Supervised: `stalwart run configs/demo.yaml`, whose chaos section SIGKILLs the trainer
   at random moments; stalwart relaunches it from the newest verified checkpoint.
3. Summary from the journal and the trainer's step log: attempts, faults injected and
   recovered, checkpoints written, work lost, the advised interval, the final loss, and
   whether the final weights and optimizer state equal the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stalwart.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
STEPS = 600


def lost_steps(log_path: Path) -> list[int]:
    """Steps each interrupted attempt did that the next one had to redo."""
    last: dict[int, int] = {}
    resumed: dict[int, int] = {}
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if "resumed" in entry:
            resumed[entry["attempt"]] = entry["resumed"]
        elif "step" in entry:
            last[entry["attempt"]] = entry["step"]
    attempts = sorted(last)
    return [max(last[a] - resumed.get(b, 0), 0) for a, b in itertools.pairwise(attempts)]


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    # The job's `python` is this environment's, wherever `make` was run from.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(DEMO)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    print(f"== 1. reference: {STEPS} steps, standalone, uninterrupted", flush=True)
    subprocess.run(
        [
            sys.executable,
            "examples/train_tiny.py",
            "--steps",
            str(STEPS),
            "--ckpt-dir",
            str(DEMO / "reference"),
            "--out",
            str(DEMO / "reference.json"),
            "--print-every",
            "200",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reference = json.loads((DEMO / "reference.json").read_text())
    print(f"   final loss {reference['final_loss']:.4f}", flush=True)

    print("== 2. supervised: stalwart run configs/demo.yaml (chaos kills the trainer)", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "stalwart", "run", "configs/demo.yaml"],
        cwd=ROOT,
        env=env,
        check=False,
    )

    print("\n== 3. what stalwart recovered")
    with Journal(DEMO / "state" / "journal.sqlite") as journal:
        (run,) = journal.runs("demo")
        attempts = journal.attempts(run.run_id)
        saves = journal.checkpoints("demo")
        decisions = journal.interval_decisions("demo")
    for a in attempts:
        ended = f"signal {a.signal}" if a.signal is not None else f"exit {a.exit_code}"
        resumed = Path(a.resume_from).name if a.resume_from else "scratch"
        if a.resume_from:
            on_disk = Path(a.resume_from).is_relative_to((DEMO / "checkpoints").resolve())
            resumed += " (disk)" if on_disk else " (memory)"
        print(
            f"   attempt {a.attempt}: from {resumed:24} ran {a.uptime_s or 0:5.1f} s, "
            f"{ended:9} -> {a.kind}{'  (injected)' if 'chaos' in (a.reason or '') else ''}"
        )
    injected = sum("chaos" in (a.reason or "") for a in attempts)
    lost = lost_steps(DEMO / "steps.jsonl")
    final_path = DEMO / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    same = (
        final.get("weights_sha256") == reference["weights_sha256"]
        and final.get("optimizer_sha256") == reference["optimizer_sha256"]
    )
    print(
        f"   faults injected {injected}, recovered {injected if result.returncode == 0 else 0}; "
        f"stalwart exit code {result.returncode}"
    )
    in_memory = sum(c.source == "trainer-memory" for c in saves)
    print(
        f"   checkpoints written {len(saves) - in_memory} to disk, {in_memory} to memory; "
        "advised disk interval " + " -> ".join(f"{d.interval_s:.1f} s" for d in decisions[-4:])
    )
    print(f"   work lost per crash (steps): {lost} (out of {STEPS})")
    print(
        f"   final loss {final.get('final_loss', float('nan')):.4f} "
        f"(uninterrupted: {reference['final_loss']:.4f})"
    )
    print(
        f"   final weights and optimizer state {'==' if same else '!='} the uninterrupted "
        f"run's, bit for bit"
    )
    print(
        "   details: stalwart history demo --state-dir .demo/state; "
        "stalwart report demo --state-dir .demo/state --out .demo/timeline.png"
    )
    return 0 if result.returncode == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
