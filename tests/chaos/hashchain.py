"""A deterministic trainer for the chaos suite: its 'weights' are a hash chain over steps.

Each step costs --step-s of work and folds the step into a SHA-256 chain, so the final
digest is bitwise the same for any sequence of interruptions that resumes correctly and
different for any that loses, repeats or corrupts a step. Checkpoints go through the
atomic store at the advised interval; each save is written in chunks with small pauses,
so random kills land inside saves too. Progress and saves are appended to --log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from stalwart.checkpoint import CheckpointStore
from stalwart.client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--step-s", type=float, default=0.004)
    parser.add_argument("--log", required=True)
    parser.add_argument("--save-chunks", type=int, default=8)
    parser.add_argument("--big-save-at", type=int, help="attempt 0: saves from this step are big")
    parser.add_argument("--poison-at", type=int, help="attempt 0: first save from here is poison")
    parser.add_argument("--corrupt-on-attempt", type=int, help="this attempt damages the newest")
    args = parser.parse_args()
    client = Client()
    store = CheckpointStore.from_env()
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - appended to until exit

    def note(**entry: object) -> None:
        record = {"t": time.monotonic(), "wall": time.time(), "run": client.run_id}
        log.write(json.dumps({**record, "attempt": client.attempt, **entry}) + "\n")

    step, chain = 0, hashlib.sha256(b"seed").hexdigest()
    if args.corrupt_on_attempt == client.attempt:
        # Damage between attempts (bit rot, a bad disk): the chain in the newest save changes.
        newest = sorted(store.root.glob("step-*"))[-1] / "state.json"
        text = newest.read_text()
        at = text.index('"chain": "') + len('"chain": "')
        newest.write_text(text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :])
        note(event="corrupted", path=str(newest.parent))
        return 1
    resume = os.environ.get("STALWART_RESUME_FROM", "")
    if resume:
        state = json.loads((Path(resume) / "state.json").read_text())
        if state.get("poison"):
            note(event="poisoned", resume=resume)
            print(f"RuntimeError: loss is NaN after restoring {resume}", file=sys.stderr)
            return 1
        # The chain must be exactly the one saved: a corrupt resume shows up here.
        if hashlib.sha256(state["chain"].encode()).hexdigest() != state["check"]:
            note(event="corrupt-resume", resume=resume)
            print("CheckpointCorrupt: chain check failed", file=sys.stderr)
            return 1
        step, chain = state["step"], state["chain"]
    note(event="start", step=step, resume=resume, pid=os.getpid())
    client.ready()
    while step < args.steps:
        deadline = time.monotonic() + args.step_s
        while time.monotonic() < deadline:
            pass
        step += 1
        chain = hashlib.sha256(f"{chain}:{step}".encode()).hexdigest()
        client.step(step)
        note(event="step", step=step)
        if client.should_checkpoint(step) or step == args.steps:
            began = time.monotonic()
            client.checkpoint_begin(step)
            big = args.big_save_at is not None and step >= args.big_save_at and client.attempt == 0
            payload = b"x" * (1 << 20 if big else 4096)
            poison = args.poison_at is not None and step >= args.poison_at and client.attempt == 0
            state = {
                "step": step,
                "chain": chain,
                "poison": poison,
                "check": hashlib.sha256(chain.encode()).hexdigest(),
            }
            with store.begin(step) as tx:
                for chunk in range(args.save_chunks):
                    tx.write_bytes(f"part-{chunk}.bin", payload)
                    time.sleep(0.002)
                tx.write_bytes("state.json", json.dumps(state).encode())
            client.saved(step, stall_s=time.monotonic() - began)
            note(event="save", step=step)
            if poison:
                return 1
        if client.should_exit():
            note(event="drained", step=step)
            return 0
    note(event="done", step=step, chain=chain)
    client.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
