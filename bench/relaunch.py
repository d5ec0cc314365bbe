"""Relaunch latency: trainer death -> the next trainer's first line of output.

Compares `stalwart run` (backoff 0) against a bare `subprocess.Popen` loop that
relaunches the same command as soon as it sees it exit, in the same run (this
machine is noisy: only the ratio means something). Prints p50/p90 and the ratio.

    .venv/bin/python bench/relaunch.py [--relaunches 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINER = """
import os, sys, time
print("up", flush=True)
attempt = int(os.environ["STALWART_ATTEMPT"])
print(f"dying {time.monotonic():.6f}", flush=True)
sys.exit(1 if attempt < int(os.environ["BENCH_RELAUNCHES"]) else 0)
"""


def _latencies(lines: list[tuple[float, str]]) -> list[float]:
    """From (arrival time, text) lines: each 'up' arrival minus the previous death stamp."""
    latencies, death = [], None
    for arrived, text in lines:
        if text.endswith("up") and death is not None:
            latencies.append(arrived - death)
            death = None
        elif "dying " in text:
            death = float(text.rsplit(" ", 1)[1])
    return latencies


def bare(command: list[str], relaunches: int) -> list[float]:
    lines: list[tuple[float, str]] = []
    for attempt in range(relaunches + 1):
        env = {**os.environ, "STALWART_ATTEMPT": str(attempt), "BENCH_RELAUNCHES": str(relaunches)}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line.strip()))
        proc.wait()
    return _latencies(lines)


def supervised(command: list[str], relaunches: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        argv = [
            sys.executable,
            "-m",
            "stalwart",
            "run",
            "--state-dir",
            str(Path(tmp) / "state"),
            "--max-restarts",
            str(relaunches + 1),
            "--set",
            "restart.backoff_initial_s=0",
            "--",
            *command,
        ]
        env = {**os.environ, "BENCH_RELAUNCHES": str(relaunches), "XDG_RUNTIME_DIR": tmp}
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert proc.stdout is not None
        lines = [(time.monotonic(), line.strip()) for line in proc.stdout]
        if proc.wait() != 0:
            raise SystemExit(f"stalwart exited {proc.returncode}")
    return _latencies(lines)


def _ms(values: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relaunches", type=int, default=40)
    args = parser.parse_args()
    command = [sys.executable, "-S", "-c", TRAINER]
    base = bare(command, args.relaunches)
    sup = supervised(command, args.relaunches)
    assert len(base) == len(sup) == args.relaunches, (len(base), len(sup))
    print(f"relaunches: {args.relaunches} each")
    print(f"bare Popen loop   p50 {_ms(base, 50):6.1f} ms   p90 {_ms(base, 90):6.1f} ms")
    print(f"stalwart run      p50 {_ms(sup, 50):6.1f} ms   p90 {_ms(sup, 90):6.1f} ms")
    print(
        f"ratio p50 stalwart/bare: {statistics.median(sup) / statistics.median(base):.2f} "
        "(goal <= 1.5; stalwart p50 goal < 100 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
