"""Issue 17, defects 1 and 2, with real processes: a stop during a preemption drain, a
notice during a stop, and a trainer that cannot be reaped during a drain.

Each of these crashed the supervisor (`IllegalTransition`, exit 1) and SIGKILLed the
trainer in the middle of its emergency save. Now a stop merges into the drain, a notice
upgrades a stop to a preemption, and every ending during a drain ends the job with 75.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stalwart.journal import Journal
from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH
from tests.conftest import wait_for
from tests.preemption.fake_metadata import FakeMetadata, Reply
from tests.supervised import environment, stalwart_argv

SAVER = Path(__file__).resolve().parent.parent / "trainers" / "slow_saver.py"


def _start(
    tmp_path: Path,
    runtime_dir: Path,
    base_url: str,
    *trainer_args: str,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        "preemption.provider=gcp",
        "--set",
        f"preemption.gcp_base_url={base_url}",
        "--set",
        "preemption.gcp_notice_s=8",
        "--set",
        "preemption.poll_interval_s=0.2",
        "--set",
        "preemption.timeout_s=0.2",
        "--set",
        "preemption.drain_margin_s=1",
        "--set",
        "stop.grace_s=20",
        *extra,
        "--",
        sys.executable,
        str(SAVER),
        "--log",
        str(tmp_path / "log.jsonl"),
        *trainer_args,
    )
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


class Stderr:
    """The supervisor's stderr, read as it comes (the test waits on its log lines)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, args=(proc,))
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    def has(self, needle: str) -> bool:
        return any(needle in line for line in list(self.lines))

    def text(self) -> str:
        self._thread.join(timeout=30)
        if self._proc.stderr is not None and not self._thread.is_alive():
            self._proc.stderr.close()
        return "".join(self.lines)


def _start_holding(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata
) -> tuple[subprocess.Popen[str], Stderr, Path]:
    """A supervisor over a trainer whose save lasts until the returned file exists."""
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
    hold = tmp_path / "go"
    supervisor = _start(
        tmp_path, runtime_dir, metadata.base_url, "--save-s", "0.2", "--hold", str(hold)
    )
    return supervisor, Stderr(supervisor), hold


def _events(tmp_path: Path) -> list[str]:
    path = tmp_path / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def _has(tmp_path: Path, event: str) -> bool:
    return event in _events(tmp_path)


def _finish(supervisor: subprocess.Popen[str], stderr: Stderr) -> str:
    try:
        supervisor.wait(timeout=40)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=5)
    return stderr.text()


def _journal_attempts(tmp_path: Path) -> list[tuple[str | None, float | None]]:
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        return [(a.kind, a.ended_unix) for a in journal.attempts()]


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "control"])
def test_a_stop_during_a_preemption_drain_lets_the_emergency_save_finish(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata, stop: str
) -> None:
    supervisor, stderr, hold = _start_holding(tmp_path, runtime_dir, metadata)
    try:
        wait_for(lambda: stderr.has("attempt 0 started"), 20, "the attempt to start")
        wait_for(lambda: _has(tmp_path, "ready"), 20, "the trainer to run")
        time.sleep(0.3)  # a few heartbeats: the trainer drains itself from the advice
        metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
        wait_for(lambda: _has(tmp_path, "save_begin"), 20, "the emergency save to begin")
        if stop == "control":
            subprocess.run(
                stalwart_argv("stop", "--state-dir", str(tmp_path / "state")),
                env=environment(runtime_dir),
                capture_output=True,
                timeout=30,
                check=True,
            )
        else:
            supervisor.send_signal(getattr(signal, stop))
        wait_for(lambda: stderr.has("the drain goes on"), 20, "the stop to join the drain")
        hold.touch()  # the save may end now
    finally:
        hold.touch()
        err = _finish(supervisor, stderr)
    assert supervisor.returncode == 75, err
    assert "IllegalTransition" not in err and "Traceback" not in err, err
    assert _events(tmp_path)[-1] == "save_end", err
    assert "the drain goes on" in err
    ((kind, ended),) = _journal_attempts(tmp_path)
    assert kind == "PREEMPTED" and ended is not None


def test_a_notice_during_a_stop_upgrades_it_to_a_preemption(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata
) -> None:
    supervisor, stderr, hold = _start_holding(tmp_path, runtime_dir, metadata)
    try:
        wait_for(lambda: stderr.has("attempt 0 started"), 20, "the attempt to start")
        wait_for(lambda: _has(tmp_path, "ready"), 20, "the trainer to run")
        supervisor.send_signal(signal.SIGINT)
        wait_for(lambda: _has(tmp_path, "save_begin"), 20, "the save to begin")
        metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
        wait_for(lambda: stderr.has("gcp terminate notice"), 20, "the notice to be seen")
        hold.touch()
    finally:
        hold.touch()
        err = _finish(supervisor, stderr)
    assert supervisor.returncode == 75, err
    assert "Traceback" not in err, err
    assert _events(tmp_path).count("signal") == 1  # the stop signal went once
    assert _events(tmp_path)[-1] == "save_end"
    ((_, ended),) = _journal_attempts(tmp_path)
    assert ended is not None


def _hold_as_tracer(pid: int, hold_s: float) -> subprocess.Popen[bytes]:
    """A process that ptrace-seizes `pid` and never waits for it: once SIGKILLed, the
    trainer stays unreapable by its parent until the tracer exits (after `hold_s`)."""
    code = (
        "import ctypes, sys, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.ptrace(0x4206, {pid}, None, None) != 0:\n"  # PTRACE_SEIZE
        "    sys.exit(ctypes.get_errno())\n"
        "print('held', flush=True)\n"
        f"time.sleep({hold_s})\n"
    )
    tracer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert tracer.stdout is not None
    line = tracer.stdout.readline()
    if line.strip() != b"held":
        tracer.communicate(timeout=5)
        pytest.skip(f"cannot ptrace here (errno {tracer.returncode})")
    return tracer


def test_a_trainer_that_cannot_be_reaped_during_a_drain_ends_in_75(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata
) -> None:
    assert ctypes.CDLL(None).ptrace is not None
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
    pidfile = tmp_path / "trainer.pid"
    supervisor = _start(
        tmp_path,
        runtime_dir,
        metadata.base_url,
        "--silent",
        "--ignore-term",
        "--pidfile",
        str(pidfile),
        extra=("--set", "stop.kill_wait_s=1", "--set", "preemption.gcp_notice_s=2"),
    )
    stderr = Stderr(supervisor)
    tracer = None
    try:
        wait_for(pidfile.exists, 20, "the trainer to run")
        tracer = _hold_as_tracer(int(pidfile.read_text()), 30.0)
        metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
        err = _finish(supervisor, stderr)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=5)
        stderr.text()
        if tracer is not None:
            tracer.kill()
            tracer.communicate(timeout=5)
    assert supervisor.returncode == 75, err
    assert "could not be reaped" in err or "survived SIGKILL" in err, err
    assert "Traceback" not in err, err
    ((kind, ended),) = _journal_attempts(tmp_path)
    assert ended is not None and kind == "PREEMPTED"
    assert os.path.exists(pidfile)
