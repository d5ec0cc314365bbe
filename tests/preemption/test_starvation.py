"""Preemption polls never wait behind checkpoint hashing (issue 17, defect 8).

The polls once shared a two-worker pool with adoption and retention, which hash whole
checkpoints under the keeper lock: with a 2 GB foreign checkpoint being adopted (one
worker hashing, the other's retention pass waiting for the lock) a 0.5 s poll saw its
notice seconds late. Now the polls have a worker of their own.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from stalwart import paths
from stalwart.host.scheduler import Pool, Scheduler
from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH
from tests.conftest import wait_for
from tests.preemption.fake_metadata import FakeMetadata, Reply
from tests.supervised import environment

DRAINER = Path(__file__).resolve().parent.parent / "trainers" / "drainer.py"
HELD_JOBS = Path(__file__).resolve().parent / "held_jobs.py"
POLL_S = 0.5
SLACK_S = 0.5
"""A notice is acted on within one poll interval plus this."""


def safetensors(path: Path, data_bytes: int) -> Path:
    """A format-valid safetensors file of one U8 tensor; its data is a hole (sparse)."""
    header = json.dumps(
        {"weights": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + data_bytes)
    return path


def test_a_poll_runs_while_every_heavy_worker_is_blocked() -> None:
    """In-process: heavy jobs fill (and queue behind) their pool; the poll keeps its pace."""
    release = threading.Event()
    polls: list[float] = []
    posted: list[object] = []
    scheduler = Scheduler(posted.append)
    try:
        for n in range(4):  # two block both heavy workers, two more wait in the queue
            scheduler.submit(f"heavy-{n}", lambda: release.wait(10) and None, pool=Pool.HEAVY)
        scheduler.every("poll", 0.05, lambda: polls.append(time.monotonic()), pool=Pool.PREEMPTION)
        scheduler.start()
        wait_for(lambda: len(polls) >= 5, 2.0, "five polls while the heavy jobs block")
        assert not release.is_set()
    finally:
        release.set()
        scheduler.shutdown()


def test_notice_is_acted_on_within_a_poll_while_an_adoption_hashes(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata
) -> None:
    """Real `stalwart run`: a foreign checkpoint's adoption is held mid-hash (keeper lock
    taken) while a retention pass waits for the lock; the GCP notice reaches the advice
    file within poll_interval_s + 0.5 s all the same."""
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
    hold = tmp_path / "hold"
    hold.mkdir()
    state, ckpt = tmp_path / "state", tmp_path / "ck"
    argv = [
        sys.executable,
        str(HELD_JOBS),
        str(hold),
        "run",
        "--state-dir",
        str(state),
        "--ckpt-dir",
        str(ckpt),
        *("--set", "preemption.provider=gcp"),
        *("--set", f"preemption.gcp_base_url={metadata.base_url}"),
        *("--set", f"preemption.poll_interval_s={POLL_S}"),
        *("--set", "preemption.timeout_s=0.2"),
        *("--set", "preemption.gcp_notice_s=30"),
        *("--set", "checkpoint.foreign_globs=['*.safetensors']"),
        *("--set", "checkpoint.quiescence_s=0.2"),
        *("--set", "checkpoint.interval.mode=fixed"),
        *("--set", "checkpoint.interval.fixed_interval_s=0.3"),
        "--",
        sys.executable,
        str(DRAINER),
        *("--log", str(tmp_path / "log.jsonl")),
        *("--ready", str(tmp_path / "ready")),
    ]
    supervisor = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    latency_s: float | None = None
    try:
        wait_for((tmp_path / "ready").exists, 20, "the trainer's first checkpoint")
        runtime = paths.recorded_runtime_dir(state)
        assert runtime is not None
        advice = runtime / "advice.json"
        safetensors(ckpt / "model-1.safetensors", 1 << 20)
        wait_for((hold / "hashing").exists, 10, "the adoption to start hashing")
        # The trainer saves every 0.3 s, each save a retention pass, now waiting for the lock.
        wait_for((hold / "both").exists, 10, "a retention pass beside the held adoption")
        time.sleep(2 * POLL_S)  # polls that would queue behind them are due meanwhile
        assert not json.loads(advice.read_text())["drain"]
        flipped = time.monotonic()
        metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
        limit_s = POLL_S + SLACK_S
        while time.monotonic() - flipped < limit_s + 2.0:
            if json.loads(advice.read_text())["drain"]:
                latency_s = time.monotonic() - flipped
                break
            time.sleep(0.005)
        (hold / "release").touch()
        _, err = supervisor.communicate(timeout=30)
    finally:
        (hold / "release").touch()
        supervisor.kill()
        supervisor.communicate(timeout=10)
    assert latency_s is not None, f"no drain within {limit_s + 2.0} s of the notice"
    assert latency_s <= limit_s, f"notice acted on after {latency_s:.2f} s (limit {limit_s} s)"
    assert supervisor.returncode == 75, err
    assert "gcp terminate notice" in err
