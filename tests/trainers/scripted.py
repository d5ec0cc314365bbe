"""A fake trainer whose behaviour the test scripts through flags. Standard library only."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", help="append one JSON line about this attempt")
    parser.add_argument("--fail-until", type=int, default=0, help="exit 1 while attempt < N")
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--stderr", default="", help="write this line to stderr before failing")
    parser.add_argument("--run-s", type=float, default=0.0, help="stay alive this long first")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--signals", help="append the name of each stop signal received")
    parser.add_argument("--spawn-child", action="store_true", help="start a sleeping child")
    parser.add_argument("--ready", help="create this file once running (after any child)")
    parser.add_argument("--canary", help="create this file at start")
    args = parser.parse_args()

    attempt = int(os.environ.get("STALWART_ATTEMPT", "-1"))
    if args.canary:
        open(args.canary, "w").close()
    child_pid = None
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        child_pid = child.pid
    if args.record:
        record = {
            "attempt": attempt,
            "pid": os.getpid(),
            "child_pid": child_pid,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("STALWART_", "NOTIFY"))},
        }
        with open(args.record, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_stop(signum: int, frame: object) -> None:
        if args.signals:
            with open(args.signals, "a") as handle:
                handle.write(signal.Signals(signum).name + "\n")
        if not args.ignore_term:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if args.ready:
        open(args.ready, "w").close()
    deadline = time.monotonic() + args.run_s
    while time.monotonic() < deadline:
        time.sleep(0.01)
    if attempt < args.fail_until:
        if args.stderr:
            print(args.stderr, file=sys.stderr)
        return args.exit_code
    print(f"attempt {attempt} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
