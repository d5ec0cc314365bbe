"""`make demo`: supervise a training job that crashes at random, then show what was recovered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stalwart.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(DEMO)}

    print("== reference: the same job once, without crashes")
    reference_dir = DEMO / "reference"
    subprocess.run(
        [sys.executable, "examples/crashy_train.py"],
        cwd=ROOT,
        env={**env, "DEMO_CRASH_PROB": "0", "STALWART_CKPT_DIR": str(reference_dir)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    reference = json.loads((reference_dir / "final.json").read_text())

    print("== supervised: stalwart run configs/demo.yaml (crashes injected at random)")
    result = subprocess.run(
        [sys.executable, "-m", "stalwart", "run", "configs/demo.yaml"],
        cwd=ROOT,
        env=env,
        check=False,
    )

    print("\n== what stalwart recovered")
    with Journal(DEMO / "state" / "journal.sqlite") as journal:
        (run,) = journal.runs("demo")
        attempts = journal.attempts(run.run_id)
    for a in attempts:
        ended = f"signal {a.signal}" if a.signal is not None else f"exit {a.exit_code}"
        print(f"  attempt {a.attempt}: ran {a.uptime_s or 0:5.2f} s, {ended:9} -> {a.kind}")
    crashes = sum(1 for a in attempts if a.kind not in ("COMPLETED", "STOPPED"))
    final_path = DEMO / "checkpoints" / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else None
    print(
        f"  crashes survived: {crashes}; relaunches: {len(attempts) - 1}; "
        f"stalwart exit code: {result.returncode}"
    )
    same = final == reference
    print(f"  final weights {final} {'==' if same else '!='} uninterrupted run {reference}")
    print(
        f"  journal: {DEMO / 'state' / 'journal.sqlite'} "
        f"(see: stalwart history demo --state-dir .demo/state)"
    )
    return 0 if result.returncode == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
