"""A trainer that commits checkpoints through the store and reports them; scripted by flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stalwart.checkpoint import CheckpointStore
from stalwart.client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--corrupt-newest", action="store_true", help="attempt 0: flip a byte")
    parser.add_argument("--wait-for-at-most", type=int, help="exit once this few step dirs remain")
    parser.add_argument("--poison-step", type=int, help="attempt 0 writes this step as poison")
    parser.add_argument("--total", type=int, help="exit 0 once this step is saved")
    args = parser.parse_args()
    client = Client()
    store = CheckpointStore.from_env()
    resume = os.environ.get("STALWART_RESUME_FROM", "")
    with open(args.record, "a") as handle:
        handle.write(json.dumps({"attempt": client.attempt, "resume_from": resume}) + "\n")
    start = 0
    if resume:
        state = json.loads((Path(resume) / "state.json").read_text())
        if state.get("poison"):
            print(
                f"RuntimeError: loss is NaN after restoring step {state['step']}", file=sys.stderr
            )
            return 1
        start = state["step"]
    for step in range(start + 1, start + args.saves + 1):
        began = time.monotonic()
        client.checkpoint_begin(step)
        poison = step == args.poison_step and client.attempt == 0
        with store.begin(step) as tx:
            tx.write_bytes("state.json", json.dumps({"step": step, "poison": poison}).encode())
            tx.write_bytes("weights.bin", bytes(range(256)) * 64)
        client.saved(step, stall_s=time.monotonic() - began, size_bytes=16_640)
        if poison:
            return 1
        if args.total is not None and step >= args.total:
            client.done()
            return 0
    if args.corrupt_newest and client.attempt == 0:
        newest = sorted(store.root.glob("step-*"))[-1] / "weights.bin"
        data = bytearray(newest.read_bytes())
        data[100] ^= 0xFF
        newest.write_bytes(bytes(data))
        return 1
    if args.wait_for_at_most is not None:
        deadline = time.monotonic() + 20
        while len(list(store.root.glob("step-*"))) > args.wait_for_at_most:
            if time.monotonic() > deadline:
                return 7
            time.sleep(0.05)
    client.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
