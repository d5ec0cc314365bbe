"""Loop latency while the resume checkpoint verifies (issue 17).

A 4 GiB checkpoint (real bytes, committed with its digest) is verified by the supervisor
before the first launch. SIGINT is sent at random moments of that verification; the
latency is from the signal to the supervisor's own log record of acting on it (the
transition to EXITED, `--log-format json` timestamps). The baseline, in the same run:
SIGINT to a supervisor whose trainer is running and nothing is being verified (the
transition to STOPPING). Prints p50/p99 of both, the ratio, and the verification time.

    .venv/bin/python bench/loop_latency.py [--rounds 20] [--gib 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import xxhash

from stalwart.checkpoint import CheckpointStore
from stalwart.checkpoint.manifest import FileEntry

BLOCK = 64 << 20


def make_checkpoint(root: Path, gib: int) -> None:
    tx = CheckpointStore(root).begin(100)
    block = os.urandom(BLOCK)
    hasher = xxhash.xxh3_128()
    size = 0
    with tx.path("model.bin").open("wb") as handle:
        for _ in range(gib * (1 << 30) // BLOCK):
            handle.write(block)
            hasher.update(block)
            size += BLOCK
        handle.flush()
        os.fsync(handle.fileno())
    tx.commit_sealed([FileEntry("model.bin", size, hasher.hexdigest())])


class Supervisor:
    """`stalwart run` with JSON logs read in a thread: (time, message) records."""

    def __init__(self, work: Path, ckpt: Path, command: list[str]) -> None:
        state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
        self.records: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stalwart",
                "--log-format",
                "json",
                "run",
                "--state-dir",
                str(state),
                "--ckpt-dir",
                str(ckpt),
                "--",
                *command,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "XDG_RUNTIME_DIR": str(work)},
        )
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                record = json.loads(line)
                self.records.append((record["time"], record["message"]))

    def wait_for(self, needle: str, timeout_s: float = 120.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, message in list(self.records):
                if needle in message:
                    return at
            time.sleep(0.002)
        raise TimeoutError(needle)

    def close(self) -> None:
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gib", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="swlat-", dir="/tmp"))
    try:
        ckpt = work / "ck"
        make_checkpoint(ckpt, args.gib)
        trainer = [sys.executable, "-c", "import time; time.sleep(120)"]
        # calibration: how long the verification takes (page cache warm after the first)
        verify_s = []
        for _ in range(2):
            sup = Supervisor(work, ckpt, trainer)
            launching = sup.wait_for("-> STARTING")
            verify_s.append(sup.wait_for("attempt 0 started") - launching)
            sup.proc.send_signal(signal.SIGINT)
            sup.close()
        verifying_s = statistics.median(verify_s)
        during, idle = [], []
        for _ in range(args.rounds):
            sup = Supervisor(work, ckpt, trainer)
            sup.wait_for("-> STARTING")
            time.sleep(rng.uniform(0.05, 0.7) * verifying_s)
            sent = time.time()
            sup.proc.send_signal(signal.SIGINT)
            during.append(sup.wait_for("-> EXITED") - sent)
            sup.close()
            sup = Supervisor(work, ckpt, trainer)
            sup.wait_for("attempt 0 started")
            time.sleep(rng.uniform(0.05, 0.3))
            sent = time.time()
            sup.proc.send_signal(signal.SIGINT)
            idle.append(sup.wait_for("-> STOPPING") - sent)
            sup.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"checkpoint {args.gib} GiB, full verification {verifying_s:.2f} s (warm page cache)")
    print(
        f"SIGINT -> acted on, while verifying: p50 {statistics.median(during) * 1e3:.1f} ms"
        f"  p99 {pct(during, 0.99) * 1e3:.1f} ms  ({args.rounds} rounds)"
    )
    print(
        f"SIGINT -> acted on, idle loop:       p50 {statistics.median(idle) * 1e3:.1f} ms"
        f"  p99 {pct(idle, 0.99) * 1e3:.1f} ms"
    )
    print(
        f"ratio p99 verifying/idle: {pct(during, 0.99) / pct(idle, 0.99):.2f}"
        f" (goal: verifying p99 < 100 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
