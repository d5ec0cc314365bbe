"""The acceptance tests of `stalwart run`, with the real CLI over real processes."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from stalwart.journal import Journal
from tests.conftest import wait_for
from tests.supervised import alive, environment, records, run, stalwart_argv, start


def test_relaunches_until_success_and_journals_every_attempt(
    tmp_path: Path, runtime_dir: Path
) -> None:
    record = tmp_path / "attempts.jsonl"
    result = run(tmp_path, runtime_dir, [], ["--record", str(record), "--fail-until", "3"])
    assert result.returncode == 0, result.stderr
    seen = records(record)
    assert [r["attempt"] for r in seen] == [0, 1, 2, 3]
    assert [r["env"]["STALWART_ATTEMPT"] for r in seen] == ["0", "1", "2", "3"]
    assert len({r["env"]["STALWART_RUN_ID"] for r in seen}) == 1
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
        assert [a.attempt for a in attempts] == [0, 1, 2, 3]
        assert [a.kind for a in attempts] == ["UNKNOWN", "UNKNOWN", "UNKNOWN", "COMPLETED"]
        assert [a.exit_code for a in attempts] == [1, 1, 1, 0]
        assert all(a.ended_unix is not None and a.uptime_s is not None for a in attempts)
        assert journal.runs()[0].status == "completed"
    mode = sqlite3.connect(tmp_path / "state" / "journal.sqlite")
    try:
        assert mode.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        mode.close()
    assert "training finished after 4 attempt(s)" in result.stderr


def test_trainer_environment_contract(tmp_path: Path, runtime_dir: Path) -> None:
    record = tmp_path / "attempts.jsonl"
    env = environment(runtime_dir)
    env["NOTIFY_SOCKET"] = "/run/systemd/notify"
    result = subprocess.run(
        stalwart_argv(
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            "--ckpt-dir",
            str(tmp_path / "ck"),
            "--",
            "python3",
            str(Path(__file__).parent / "trainers" / "scripted.py"),
            "--record",
            str(record),
        ),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (seen,) = records(record)
    got = seen["env"]
    assert "NOTIFY_SOCKET" not in got
    assert got["STALWART_ATTEMPT"] == "0"
    assert got["STALWART_CKPT_DIR"] == str(tmp_path / "ck")
    assert got["STALWART_RESUME_FROM"] == ""
    assert len(got["STALWART_RUN_ID"]) >= 8
    assert Path(got["STALWART_ADVICE_FILE"]).parent == runtime_dir / "stalwart" / "default"
    assert got["STALWART_NOTIFY_SOCKET"].endswith("notify.sock")
    assert (tmp_path / "ck").is_dir()


def test_always_failing_gives_up_with_growing_backoff(tmp_path: Path, runtime_dir: Path) -> None:
    record = tmp_path / "attempts.jsonl"
    options = [
        "--max-restarts",
        "3",
        "--set",
        "restart.backoff_initial_s=0.2",
        "--set",
        "restart.backoff_multiplier=2",
        "--set",
        "restart.jitter=none",
    ]
    result = run(tmp_path, runtime_dir, options, ["--record", str(record), "--fail-until", "99"])
    assert result.returncode == 3, result.stderr
    assert "gave up" in result.stderr and "restart budget spent" in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
        assert len(attempts) == 4  # the first launch and max_restarts relaunches
        assert journal.runs()[0].status == "gave_up"
        gaps = [
            later.started_unix - (earlier.ended_unix or 0)
            for earlier, later in itertools.pairwise(attempts)
        ]
    # Ceilings 0.2, 0.4, 0.8 s without jitter: each gap at least its delay, growing.
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert delay * 0.95 <= gap <= delay + 1.5
    assert gaps[0] < gaps[1] < gaps[2]


def test_first_attempt_syntax_error_is_not_retried(tmp_path: Path, runtime_dir: Path) -> None:
    record = tmp_path / "attempts.jsonl"
    trainer = [
        "--record",
        str(record),
        "--fail-until",
        "9",
        "--stderr",
        "SyntaxError: invalid syntax",
    ]
    result = run(tmp_path, runtime_dir, [], trainer)
    assert result.returncode == 3
    assert len(records(record)) == 1
    assert "USER_ERROR is not retryable" in result.stderr


def test_configured_non_retryable_exit_code(tmp_path: Path, runtime_dir: Path) -> None:
    record = tmp_path / "attempts.jsonl"
    options = ["--set", "classify.non_retryable_exit_codes=[42]"]
    result = run(
        tmp_path,
        runtime_dir,
        options,
        ["--record", str(record), "--fail-until", "9", "--exit-code", "42"],
    )
    assert result.returncode == 3
    assert len(records(record)) == 1


def test_sigkill_of_supervisor_takes_trainer_and_children(
    tmp_path: Path, runtime_dir: Path
) -> None:
    record, ready = tmp_path / "attempts.jsonl", tmp_path / "ready"
    supervisor = start(
        tmp_path,
        runtime_dir,
        [],
        ["--record", str(record), "--spawn-child", "--ready", str(ready), "--run-s", "60"],
    )
    try:
        wait_for(ready.exists, 20, "trainer to start")
        (seen,) = records(record)
        trainer, child = seen["pid"], seen["child_pid"]
        assert alive(trainer) and alive(child)
        supervisor.kill()
        supervisor.wait(5)
        killed_at = time.monotonic()
        wait_for(lambda: not alive(trainer) and not alive(child), 1.0, "trainer tree to die")
        assert time.monotonic() - killed_at <= 1.0
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)


def test_sigterm_stops_trainer_once_and_exits_zero(tmp_path: Path, runtime_dir: Path) -> None:
    record, ready, signals = tmp_path / "a.jsonl", tmp_path / "ready", tmp_path / "signals"
    supervisor = start(
        tmp_path,
        runtime_dir,
        ["--grace-s", "10"],
        [
            "--record",
            str(record),
            "--ready",
            str(ready),
            "--signals",
            str(signals),
            "--run-s",
            "60",
            "--spawn-child",
        ],
    )
    try:
        wait_for(ready.exists, 20, "trainer to start")
        (seen,) = records(record)
        sent_at = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=15)
        assert supervisor.returncode == 0, err
        assert time.monotonic() - sent_at < 10  # well within the grace: the trainer obeyed
        assert signals.read_text().splitlines() == ["SIGTERM"]
        assert not alive(seen["pid"]) and not alive(seen["child_pid"])
        assert "stopped on request" in err
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (attempt,) = journal.attempts()
        assert attempt.kind == "STOPPED"
        assert journal.runs()[0].status == "active"  # a stopped run resumes on the next start


def test_trainer_ignoring_sigterm_is_killed_after_grace(tmp_path: Path, runtime_dir: Path) -> None:
    record, ready, signals = tmp_path / "a.jsonl", tmp_path / "ready", tmp_path / "signals"
    grace_s = 1.0
    supervisor = start(
        tmp_path,
        runtime_dir,
        ["--grace-s", str(grace_s)],
        [
            "--record",
            str(record),
            "--ready",
            str(ready),
            "--signals",
            str(signals),
            "--ignore-term",
            "--run-s",
            "60",
        ],
    )
    try:
        wait_for(ready.exists, 20, "trainer to start")
        (seen,) = records(record)
        sent_at = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=15)
        elapsed = time.monotonic() - sent_at
        assert supervisor.returncode == 0, err
        assert grace_s * 0.9 <= elapsed < grace_s + 5
        assert signals.read_text().splitlines() == ["SIGTERM"]
        assert not alive(seen["pid"])
        assert "sending SIGKILL" in err
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)


def test_second_interrupt_escalates(tmp_path: Path, runtime_dir: Path) -> None:
    record, ready, signals = tmp_path / "a.jsonl", tmp_path / "ready", tmp_path / "signals"
    supervisor = start(
        tmp_path,
        runtime_dir,
        ["--grace-s", "60"],
        [
            "--record",
            str(record),
            "--ready",
            str(ready),
            "--signals",
            str(signals),
            "--ignore-term",
            "--run-s",
            "60",
        ],
    )
    try:
        wait_for(ready.exists, 20, "trainer to start")
        supervisor.send_signal(signal.SIGINT)
        wait_for(signals.exists, 10, "the trainer to get the stop signal")
        supervisor.send_signal(signal.SIGINT)
        _, err = supervisor.communicate(timeout=15)
        assert supervisor.returncode == 0, err
        assert "killing the trainer now" in err
        assert not alive(records(record)[0]["pid"])
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)


def test_second_supervisor_for_same_job_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    ready = tmp_path / "ready"
    first = start(tmp_path, runtime_dir, [], ["--ready", str(ready), "--run-s", "60"])
    try:
        wait_for(ready.exists, 20, "trainer to start")
        canary = tmp_path / "canary"
        second = run(tmp_path, runtime_dir, [], ["--canary", str(canary)])
        assert second.returncode == 2
        assert "already running" in second.stderr
        assert not canary.exists()
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=15)
        assert first.returncode == 0
    finally:
        first.kill()
        first.communicate(timeout=5)


def test_supervisor_killed_then_restarted_continues_the_run(
    tmp_path: Path, runtime_dir: Path
) -> None:
    record, ready = tmp_path / "a.jsonl", tmp_path / "ready"
    first = start(
        tmp_path, runtime_dir, [], ["--record", str(record), "--ready", str(ready), "--run-s", "60"]
    )
    try:
        wait_for(ready.exists, 20, "trainer to start")
        first.kill()
        first.communicate(timeout=5)
    finally:
        first.kill()
    result = run(tmp_path, runtime_dir, [], ["--record", str(record)])
    assert result.returncode == 0, result.stderr
    first_run, second_run = records(record)
    assert first_run["env"]["STALWART_RUN_ID"] == second_run["env"]["STALWART_RUN_ID"]
    assert second_run["attempt"] == 1
    assert "cut short by a supervisor that died" in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        kinds = [a.kind for a in journal.attempts()]
    assert kinds == ["UNKNOWN", "COMPLETED"]


@pytest.mark.parametrize("prefix", [True, False])
def test_output_passes_through(tmp_path: Path, runtime_dir: Path, prefix: bool) -> None:
    options = [] if prefix else ["--no-prefix"]
    result = run(tmp_path, runtime_dir, options, [])
    assert result.returncode == 0
    expected = "[default#0] attempt 0 finished" if prefix else "attempt 0 finished"
    assert expected in result.stdout.splitlines()


def test_history_lists_attempts(tmp_path: Path, runtime_dir: Path) -> None:
    run(tmp_path, runtime_dir, [], ["--fail-until", "1"])
    result = subprocess.run(
        stalwart_argv("history", "--state-dir", str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "completed" in lines[0]
    header = lines[2].split()
    assert header[:2] == ["attempt", "started"]
    assert lines[3].split()[0] == "0" and "exit 1" in lines[3] and "UNKNOWN" in lines[3]
    assert lines[4].split()[0] == "1" and "COMPLETED" in lines[4]
