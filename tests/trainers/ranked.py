"""A fake torchrun worker: heartbeats through stalwart.client with its RANK; one rank may fall
silent (alive, but no heartbeats) while the others keep going. No torch import."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from stalwart.client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30, help="steps of a normal attempt")
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--silent-rank", type=int, default=-1, help="rank that goes silent")
    parser.add_argument("--silent-at", type=int, default=10, help="... at this step (attempt 0)")
    parser.add_argument("--long-steps", type=int, default=3000, help="steps of the others then")
    parser.add_argument("--record", help="append one JSON line per worker start")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    client = Client()
    if args.record:
        line = {
            "attempt": client.attempt,
            "rank": rank,
            "pid": os.getpid(),
            "env": {
                k: v
                for k, v in os.environ.items()
                if k.startswith("STALWART_") or k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
            },
        }
        with open(args.record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
    client.ready()
    hanging = client.attempt == 0 and args.silent_rank >= 0
    steps = args.long_steps if hanging else args.steps
    for step in range(1, steps + 1):
        if hanging and rank == args.silent_rank and step >= args.silent_at:
            if step == args.silent_at:
                print(f"rank {rank} goes silent at step {step}", flush=True)
            time.sleep(args.step_s)  # alive and busy, but never heartbeats again
            continue
        time.sleep(args.step_s)
        client.step(step)
    print(f"rank {rank} attempt {client.attempt} done", flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
