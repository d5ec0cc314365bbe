"""A trainer whose emergency save takes a while: the drain tests stop it mid-save.

Heartbeats (unless --silent), and when the advice says drain (or a stop signal arrives),
starts a save that takes --save-s, ignoring further SIGINT/SIGTERM while it saves, writes
the checkpoint, logs each phase as a JSON line, and exits 0. --ignore-term: never leaves on
a stop signal (only SIGKILL ends it). --pidfile: write its pid there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from stalwart.client import Client


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--save-s", type=float, default=2.0)
    parser.add_argument("--silent", action="store_true", help="no heartbeats")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--pidfile")
    parser.add_argument(
        "--hold", help="during the save, wait until this file exists (at most 60 s)"
    )
    args = parser.parse_args()
    log = Path(args.log)
    stopped: list[int] = []

    def note(event: str, **fields: object) -> None:
        with log.open("a") as handle:
            handle.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")

    def on_stop(signum: int, _frame: object) -> None:
        stopped.append(signum)
        note("signal", signum=signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_stop)
    if args.pidfile:
        tmp = Path(f"{args.pidfile}.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, args.pidfile)  # whole, or not there
    client = Client() if not args.silent else None
    note("ready")
    step = 0
    while True:
        step += 1
        time.sleep(0.02)
        if client is not None:
            client.step(step)
        draining = client is not None and client.drain
        if (draining or stopped) and not args.ignore_term:
            break
    note("save_begin", step=step)
    time.sleep(args.save_s)  # signals during the save are recorded, not obeyed
    held_until = time.monotonic() + 60
    while args.hold and not os.path.exists(args.hold) and time.monotonic() < held_until:
        time.sleep(0.01)
    ckpt = Path(os.environ["STALWART_CKPT_DIR"]) / f"emergency-{step}.json"
    ckpt.write_text(json.dumps({"step": step}))
    note("save_end", step=step)
    if client is not None:
        client.saved(step, path=str(ckpt))
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
