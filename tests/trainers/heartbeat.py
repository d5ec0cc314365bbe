"""A fake trainer that heartbeats through stalwart.client, then may hang in a chosen way."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from stalwart.client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--first-step-s", type=float, default=None, help="slow first step")
    parser.add_argument("--hang-at", type=int, default=-1, help="hang at this step (attempt 0)")
    parser.add_argument("--hang", choices=["stop", "busy", "sleep"], default="busy")
    parser.add_argument("--no-client-dump", action="store_true")
    args = parser.parse_args()
    client = Client(dump_stacks=not args.no_client_dump)
    client.ready()
    for step in range(1, args.steps + 1):
        if step == args.hang_at and client.attempt == 0:
            print(f"hanging at step {step} ({args.hang})", flush=True)
            if args.hang == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # a busy loop that never heartbeats
                if args.hang == "sleep":
                    time.sleep(0.05)
        duration = args.first_step_s if step == 1 and args.first_step_s else args.step_s
        time.sleep(duration)
        client.step(step)
    print(f"attempt {client.attempt} done", flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
