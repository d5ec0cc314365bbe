"""The drainer trainer, except that its save reports name the file written (CKPT_DONE=path)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stalwart.client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--log", required=True, help="append a JSON line per save and at exit")
    parser.add_argument("--ready", help="create this file after the first save")
    args = parser.parse_args()
    client = Client()
    ckpt_dir = Path(os.environ["STALWART_CKPT_DIR"])
    log = Path(args.log)

    def note(event: str, step: int) -> None:
        with log.open("a") as handle:
            handle.write(json.dumps({"event": event, "step": step, "t": time.time()}) + "\n")

    step = 0
    for step in range(1, args.steps + 1):
        time.sleep(args.step_s)
        client.step(step)
        if client.should_checkpoint(step):
            started = time.monotonic()
            tmp = ckpt_dir / f".step-{step}.tmp"
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, ckpt_dir / f"step-{step:09d}.json")
            client.saved(
                step, stall_s=time.monotonic() - started, path=ckpt_dir / f"step-{step:09d}.json"
            )
            note("save", step)
            if args.ready and not os.path.exists(args.ready):
                open(args.ready, "w").close()
        if client.should_exit():
            note("drained", step)
            client.close()
            return 0
    note("finished", step)
    client.done()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
