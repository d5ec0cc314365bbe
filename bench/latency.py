"""Preemption notice latency while a large foreign checkpoint is being adopted (issue 17).

A real `stalwart run` (GCP watcher, a fake metadata server on 127.0.0.1) over the
client-instrumented drainer trainer (tests/trainers/drainer.py, a save every second).
Once the trainer runs, a format-valid safetensors file of `--size-gb` (sparse: its data
is a hole, written at once) appears in the checkpoint directory; `checkpoint.foreign_globs`
makes the supervisor adopt it, hashing all of it under the keeper lock while the trainer's
saves queue retention passes behind that lock. Right after the supervisor logs the
observed write, the fake server starts answering `preempted: TRUE`. Measured from that
moment, per run:

    advice   the advice file (what the trainer reads) says `drain: true`
    logged   the supervisor's stderr shows the notice
    trainer  the trainer recorded its drain (emergency save done, leaving)
    exit     the supervisor exited (75): it waits for background jobs to finish

and whether the adoption was still hashing when the drain was advised (else the run did
not measure what it should). The target is advice <= poll_interval_s + 0.5 s; the ratio
is advice / that bound (< 1 meets it). Everything is made in one temporary directory,
removed at the end.

    .venv/bin/python bench/latency.py [--runs 3] [--size-gb 2] [--poll-s 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.preemption.fake_metadata import FakeMetadata, Reply  # noqa: E402

from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH  # noqa: E402

TRAINER = ROOT / "tests" / "trainers" / "drainer.py"
SLACK_S = 0.5
FOREIGN_NAME = "model-1.safetensors"


def sparse_safetensors(path: Path, data_bytes: int) -> None:
    """A format-valid safetensors file of one U8 tensor whose data is a hole."""
    header = json.dumps(
        {"weights": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + data_bytes)


class Lines:
    """The supervisor's stderr, each line with its arrival time (monotonic)."""

    def __init__(self, stream: object) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, *needles: str) -> float | None:
        """When the first line holding every one of `needles` arrived."""
        with self._lock:
            return next((t for t, text in self.lines if all(n in text for n in needles)), None)

    def join(self) -> None:
        self._thread.join(timeout=10)

    def tail(self, n: int = 20) -> str:
        with self._lock:
            return "\n".join(text for _, text in self.lines[-n:])


def wait(
    predicate: Callable[[], object],
    timeout_s: float,
    what: str,
    supervisor: subprocess.Popen[str],
    lines: Lines,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if supervisor.poll() is not None:
            raise SystemExit(
                f"stalwart exited {supervisor.returncode} while waiting for {what}:\n{lines.tail()}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s} s waiting for {what}:\n{lines.tail()}")
        time.sleep(0.005)


def drain_advised(advice: Path) -> bool:
    return bool(json.loads(advice.read_text())["drain"])


def one_run(tmp: Path, fake: FakeMetadata, size_bytes: int, poll_s: float) -> dict[str, float]:
    fake.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    fake.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
    state, ckpt, log, ready = tmp / "state", tmp / "ck", tmp / "log.jsonl", tmp / "ready"
    argv = [
        sys.executable,
        "-m",
        "stalwart",
        "run",
        *("--state-dir", str(state), "--ckpt-dir", str(ckpt)),
        *("--set", "preemption.provider=gcp"),
        *("--set", f"preemption.gcp_base_url={fake.base_url}"),
        *("--set", f"preemption.poll_interval_s={poll_s}"),
        *("--set", f"preemption.timeout_s={min(0.2, poll_s)}"),
        *("--set", "preemption.gcp_notice_s=30"),
        *("--set", "checkpoint.foreign_globs=['*.safetensors']"),
        *("--set", "checkpoint.quiescence_s=0.2"),
        *("--set", "checkpoint.interval.mode=fixed"),
        *("--set", "checkpoint.interval.fixed_interval_s=1"),
        "--",
        sys.executable,
        str(TRAINER),
        *("--log", str(log), "--ready", str(ready)),
    ]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp / "rt")}
    supervisor = subprocess.Popen(
        argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = Lines(supervisor.stderr)
    try:
        wait(ready.exists, 60, "the trainer's first checkpoint", supervisor, lines)
        advice = next((tmp / "rt").glob("stalwart/*/advice.json"))
        sparse_safetensors(ckpt / FOREIGN_NAME, size_bytes)
        observed = f"observed foreign checkpoint {FOREIGN_NAME}"
        wait(lambda: lines.first(observed), 30, "the write", supervisor, lines)
        time.sleep(0.05)  # the adoption is submitted right after that line: let it start
        flipped, flipped_unix = time.monotonic(), time.time()
        fake.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
        wait(lambda: drain_advised(advice), 120, "drain in the advice file", supervisor, lines)
        advised = time.monotonic()
        supervisor.wait(timeout=600)
        exited = time.monotonic()
    finally:
        supervisor.kill()
        supervisor.wait()
        lines.join()
    if supervisor.returncode != 75:
        raise SystemExit(f"stalwart exited {supervisor.returncode}:\n{lines.tail()}")
    logged = lines.first("gcp terminate notice")
    adopted = lines.first("adopted", FOREIGN_NAME)  # logged by the adoption job itself
    events = [json.loads(line) for line in log.read_text().splitlines()]
    drained = [e["t"] for e in events if e["event"] == "drained"]
    return {
        "advice": advised - flipped,
        "logged": (logged - flipped) if logged is not None else float("nan"),
        "trainer": (drained[-1] - flipped_unix) if drained else float("nan"),
        "exit": exited - flipped,
        "adoption_after_advice": (adopted - advised) if adopted is not None else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--poll-s", type=float, default=0.5)
    args = parser.parse_args()
    size_bytes = int(args.size_gb * (1 << 30))
    limit_s = args.poll_s + SLACK_S
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{args.runs} runs; foreign checkpoint {args.size_gb:g} GiB (sparse); "
        f"poll_interval_s {args.poll_s:g}; bound {limit_s:g} s"
    )
    fake = FakeMetadata.start()
    results = []
    try:
        for n in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="swlat-") as tmp:
                r = one_run(Path(tmp), fake, size_bytes, args.poll_s)
            results.append(r)
            print(
                f"  run {n + 1}: advice {r['advice']:.3f} s (ratio {r['advice'] / limit_s:.2f}, "
                f"margin {limit_s - r['advice']:+.3f} s), logged {r['logged']:.3f} s, "
                f"trainer drained {r['trainer']:.3f} s, supervisor exit {r['exit']:.2f} s; "
                + (
                    f"adoption finished {r['adoption_after_advice']:+.2f} s after the advice"
                    if not math.isnan(r["adoption_after_advice"])
                    else "adoption unfinished when the supervisor exited (its exit does not wait)"
                )
            )
    finally:
        fake.stop()
    advice = [r["advice"] for r in results]
    worst = max(advice)
    # Still hashing at the drain: it finished after it, or never (the supervisor left first).
    during = sum(
        math.isnan(r["adoption_after_advice"]) or r["adoption_after_advice"] > 0 for r in results
    )
    print(
        f"notice -> drain advised: median {statistics.median(advice):.3f} s, worst {worst:.3f} s; "
        f"bound {limit_s:g} s: worst ratio {worst / limit_s:.2f}, margin {limit_s - worst:+.3f} s"
    )
    print(f"adoption still hashing when the drain was advised: {during} of {len(results)} runs")
    print(f"verdict: {'OK' if worst <= limit_s and during == len(results) else 'NOT MET'}")
    return 0 if worst <= limit_s else 1


if __name__ == "__main__":
    sys.exit(main())
