"""A real supervisor and trainer against the fake metadata service on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stalwart.journal import Journal
from stalwart.preemption import ShutdownEvidence, probe_shutdown
from stalwart.preemption.aws import INSTANCE_ACTION_PATH, TOKEN_PATH
from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH
from tests.conftest import wait_for
from tests.preemption.fake_metadata import FakeMetadata, Reply
from tests.supervised import environment, stalwart_argv

DRAINER = Path(__file__).resolve().parent.parent / "trainers" / "drainer.py"


def _start(
    tmp_path: Path, runtime_dir: Path, base_url: str, *extra: str, provider: str = "aws"
) -> subprocess.Popen[str]:
    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        f"preemption.provider={provider}",
        "--set",
        f"preemption.{provider}_base_url={base_url}",
        "--set",
        "preemption.gcp_notice_s=2",
        "--set",
        "preemption.poll_interval_s=0.2",
        "--set",
        "preemption.timeout_s=0.2",
        "--set",
        "preemption.drain_margin_s=0.5",
        "--set",
        "checkpoint.interval.mode=fixed",
        "--set",
        "checkpoint.interval.fixed_interval_s=1",
        *extra,
        "--",
        sys.executable,
        str(DRAINER),
        "--log",
        str(tmp_path / "log.jsonl"),
        "--ready",
        str(tmp_path / "ready"),
    )
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def test_spot_notice_drains_with_emergency_checkpoint_before_deadline(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata
) -> None:
    """GCP gives 30 s after preempted=TRUE; configured to 2 s here, the acceptance deadline."""
    metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    metadata.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
    supervisor = _start(tmp_path, runtime_dir, metadata.base_url, provider="gcp")
    try:
        wait_for((tmp_path / "ready").exists, 20, "the first regular checkpoint")
        noticed_unix = time.time()
        metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
        _, err = supervisor.communicate(timeout=30)
        exited_unix = time.time()
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
    deadline_unix = noticed_unix + 2.0 + 0.2  # + one poll interval until it is seen
    assert supervisor.returncode == 75, err
    assert "gcp terminate notice" in err and "machine preempted" in err
    events = _events(tmp_path)
    saves = [e for e in events if e["event"] == "save"]
    drained = [e for e in events if e["event"] == "drained"]
    assert len(drained) == 1 and len(saves) >= 2
    emergency, previous = saves[-1], saves[-2]
    assert drained[0]["step"] == emergency["step"]  # nothing after the emergency save is lost
    lost_steps = drained[0]["step"] - emergency["step"]
    assert lost_steps / max(emergency["step"] - previous["step"], 1) <= 0.05
    assert emergency["t"] <= deadline_unix
    assert exited_unix <= deadline_unix + 1.0  # the supervisor's own exit may follow
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (attempt,) = journal.attempts()
        assert attempt.kind == "PREEMPTED"
        assert journal.runs()[0].status == "active"  # the next boot resumes


def test_metadata_errors_never_disturb_the_trainer(
    tmp_path: Path, runtime_dir: Path, metadata: FakeMetadata
) -> None:
    metadata.route("PUT", TOKEN_PATH, Reply(500, "boom"))
    metadata.route("GET", INSTANCE_ACTION_PATH, Reply(200, "{garbage"))
    supervisor = _start(tmp_path, runtime_dir, metadata.base_url)
    try:
        wait_for((tmp_path / "ready").exists, 20, "the trainer to run")
        wait_for(lambda: len(metadata.seen("PUT", TOKEN_PATH)) >= 3, 20, "a few failed polls")
        metadata.route("PUT", TOKEN_PATH, Reply(200, "token"))
        wait_for(lambda: len(metadata.seen("GET", INSTANCE_ACTION_PATH)) >= 3, 20, "garbage polls")
        assert supervisor.poll() is None
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
    assert supervisor.returncode == 0, err
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert [a.kind for a in journal.attempts()] == ["STOPPED"]


def test_sigterm_during_shutdown_counts_as_preemption(tmp_path: Path, runtime_dir: Path) -> None:
    if probe_shutdown() is ShutdownEvidence.RUNNING:
        pytest.skip("this host says it is running normally: SIGTERM would be a plain stop")
    supervisor = _start(
        tmp_path,
        runtime_dir,
        "http://127.0.0.1:9",
        "--set",
        "preemption.provider=none",
        "--set",
        "preemption.sigterm_is_preemption=true",
    )
    try:
        wait_for((tmp_path / "ready").exists, 20, "the first checkpoint")
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
    assert supervisor.returncode == 75, err
    assert [e["event"] for e in _events(tmp_path)][-1] == "drained"
