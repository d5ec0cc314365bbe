"""Issue 17, defect 9: the loop never blocks on verifying the resume checkpoint.

The resume checkpoint used to be hashed on the loop thread before READY (4 GB: 5 s with
no STATUS or EXTEND_TIMEOUT to systemd and Ctrl-C ignored until the trainer had been
spawned). It is chosen in a thread of its own now: here a checkpoint that takes a few
seconds to verify (an 8 GiB sparse file) is being verified while the loop answers
systemd's watchdog, reports STATUS and EXTEND_TIMEOUT_USEC, and acts on SIGINT at once.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stalwart.checkpoint import CheckpointStore
from stalwart.checkpoint.manifest import FileEntry
from tests.conftest import wait_for
from tests.supervised import environment, stalwart_argv

SPARSE_BYTES = 16 << 30
ZEROS_XXH3_128 = "6546937950348223582f4f8a997fd4d6"
"""XXH3-128 of 16 GiB of zero bytes (xxhash.xxh3_128 over 256 updates of 64 MiB of zeros):
the fixture need not read the file it makes, only the supervisor does."""


@pytest.fixture
def big_checkpoint(tmp_path: Path) -> Path:
    """A committed checkpoint whose full verification reads 16 GiB (of holes: no disk)."""
    root = tmp_path / "ck"
    tx = CheckpointStore(root).begin(100)
    with tx.path("model.bin").open("wb") as handle:
        handle.truncate(SPARSE_BYTES)
    tx.commit_sealed([FileEntry("model.bin", SPARSE_BYTES, ZEROS_XXH3_128)])
    return root


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    return sock


def test_sigint_during_resume_verification_is_acted_on_at_once(
    tmp_path: Path, runtime_dir: Path, big_checkpoint: Path
) -> None:
    notify = _notify_socket(runtime_dir / "systemd.sock")
    env = environment(runtime_dir)
    env.update(NOTIFY_SOCKET=str(runtime_dir / "systemd.sock"), WATCHDOG_USEC="400000")
    ran = tmp_path / "trainer-ran"
    supervisor = subprocess.Popen(
        stalwart_argv(
            "--log-format",
            "json",
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            "--ckpt-dir",
            str(big_checkpoint),
            "--",
            sys.executable,
            "-c",
            f"open({str(ran)!r}, 'w').close()",
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    messages: list[tuple[float, str]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                data = notify.recv(4096).decode()
            except TimeoutError:
                continue
            messages.append((time.monotonic(), data))

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        wait_for(
            lambda: any("STATUS=verifying" in m for _, m in messages), 30, "STATUS while verifying"
        )
        sent = time.time()
        supervisor.send_signal(signal.SIGINT)
        _, err = supervisor.communicate(timeout=60)
    finally:
        stop.set()
        listener.join()
        notify.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode == 0, err
    assert not ran.exists(), "the trainer was spawned: SIGINT waited for the verification"
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    exited = [r for r in records if "-> EXITED" in r["message"]]
    assert exited, err
    assert "before the trainer started" in exited[0]["message"]
    assert exited[0]["time"] - sent < 2.0  # acted on before the verification ended
    verifying = [t for t, m in messages if "STATUS=verifying" in m]
    assert any("EXTEND_TIMEOUT_USEC=" in m for _, m in messages)
    pings = [t for t, m in messages if "WATCHDOG=1" in m and t <= verifying[0]]
    assert len(pings) >= 2, messages  # the watchdog went on while the checkpoint was hashed
