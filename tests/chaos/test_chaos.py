"""The chaos suite: the real supervisor and a deterministic trainer under injected faults.

Each test checks the promise, not the mechanism: training completes with the state
bitwise equal to an uninterrupted run's, no corrupt checkpoint is ever resumed, and
work lost per failure stays within one advised interval.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from stalwart.journal import Journal
from tests.chaos.analysis import longest_save_s, lost_work_s, read_log, reference_chain
from tests.conftest import wait_for
from tests.supervised import alive, environment, stalwart_argv

TRAINER = Path(__file__).parent / "hashchain.py"
STEPS = 1200
LONG_STEPS = 4000
"""Enough work (16 s) that thirty kills land before training ends."""
INTERVAL_S = 0.1


def events(tmp_path: Path) -> list[dict[str, Any]]:
    return read_log(tmp_path / "log.jsonl")


def argv(
    tmp_path: Path, *options: str, trainer: tuple[str, ...] = (), steps: int = STEPS
) -> list[str]:
    return stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        "restart.backoff_initial_s=0",
        "--set",
        "checkpoint.interval.mode=fixed",
        "--set",
        f"checkpoint.interval.fixed_interval_s={INTERVAL_S}",
        "--set",
        "monitor.notify_batch_s=0.05",
        *options,
        "--",
        *(trainer or (sys.executable, str(TRAINER))),
        "--steps",
        str(steps),
        "--log",
        str(tmp_path / "log.jsonl"),
    )


@pytest.mark.timeout(240)
def test_thirty_random_trainer_kills(tmp_path: Path, runtime_dir: Path) -> None:
    kills = 30
    result = subprocess.run(
        argv(
            tmp_path,
            "--chaos",
            "--max-restarts",
            "0",
            "--set",
            "chaos.kill_after_min_s=0.05",
            "--set",
            "chaos.kill_after_max_s=1.0",
            "--set",
            f"chaos.max_kills={kills}",
            "--set",
            "chaos.seed=20261125",
            steps=LONG_STEPS,
        ),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("chaos: sending SIGKILL") == kills
    log = events(tmp_path)
    done = [e for e in log if e["event"] == "done"]
    assert len(done) == 1 and done[0]["chain"] == reference_chain(LONG_STEPS)
    # Every resume was chosen by verification, and logged with its verdict.
    for start in (e for e in log if e["event"] == "start" and e["resume"]):
        assert f"resuming from {start['resume']} (step {start['step']}, intact" in result.stderr
    longest = longest_save_s(log)
    lost = lost_work_s(log)
    assert len(lost) >= kills // 2
    assert max(lost) <= INTERVAL_S + longest + 0.15, (max(lost), longest)
    attempts_started = {e["attempt"] for e in log if e["event"] == "start"}
    killed_before_start = kills + 1 - len(attempts_started)
    killed_in_save = result.stderr.count("that never committed")
    assert killed_before_start >= 1  # during start-up and restore
    assert killed_in_save >= 1  # inside a save: its staging dir was found and removed
    print(
        f"kills {kills}, during start/restore {killed_before_start}, in saves {killed_in_save}, "
        f"max lost {max(lost):.3f} s, interval {INTERVAL_S} s"
    )


def test_supervisor_killed_at_random_moments(tmp_path: Path, runtime_dir: Path) -> None:
    rng = random.Random(7)
    for round_ in range(4):
        supervisor = subprocess.Popen(
            argv(tmp_path),
            cwd=tmp_path,
            env=environment(runtime_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            goal = rng.randint(20, 120) * (round_ + 1)

            def progressed(goal: int = goal) -> bool:
                log = tmp_path / "log.jsonl"
                return log.exists() and sum(e["event"] == "step" for e in events(tmp_path)) > goal

            wait_for(progressed, 30, "progress")
            if round_ == 0:
                # The worst case: the sentinel dies with the supervisor; PDEATHSIG remains.
                for child in psutil.Process(supervisor.pid).children():
                    if "-S" in child.cmdline() and "-I" in child.cmdline():
                        child.kill()
            supervisor.kill()
            supervisor.communicate(timeout=10)
        finally:
            supervisor.kill()
            if supervisor.poll() is None:
                supervisor.communicate(timeout=10)
        started = [e for e in events(tmp_path) if e["event"] == "start"]
        pid = started[-1]["pid"]
        wait_for(lambda pid=pid: not alive(pid), 1.0, f"trainer {pid} to die with its supervisor")
    final = subprocess.run(
        argv(tmp_path),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    done = [e for e in events(tmp_path) if e["event"] == "done"]
    assert done[-1]["chain"] == reference_chain(STEPS)
    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
    assert all(a.ended_unix is not None for a in attempts)
    assert (
        sum(
            "cut short" in (a.reason or "") or "supervisor stopped" in (a.reason or "")
            for a in attempts
        )
        == 4
    )
    assert len({a.run_id for a in attempts}) == 1


def test_disk_full_during_a_save(tmp_path: Path, runtime_dir: Path) -> None:
    # 256 KiB per file on attempt 0: the 1 MiB save at step 200 cannot be written.
    limited = 'if [ "$STALWART_ATTEMPT" = 0 ]; then ulimit -f 512; fi; exec "$0" "$@"'
    trainer = ("sh", "-c", limited, sys.executable, str(TRAINER), "--big-save-at", "200")
    result = subprocess.run(
        argv(tmp_path, "--set", "checkpoint.interval.mode=fixed", trainer=trainer),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DiskFull" in result.stderr or "File too large" in result.stderr
    log = events(tmp_path)
    second = next(e for e in log if e["event"] == "start" and e["attempt"] == 1)
    failed = [e for e in log if e["attempt"] == 0 and e["event"] == "step"][-1]["step"]
    assert 0 < second["step"] < failed  # resumed from the previous intact checkpoint
    assert not list((tmp_path / "ck").glob(".staging-*"))
    done = [e for e in log if e["event"] == "done"]
    assert done[-1]["chain"] == reference_chain(STEPS)
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert journal.attempts()[0].kind == "INFRA"


def test_garbage_on_the_sockets_leaves_the_job_alone(tmp_path: Path, runtime_dir: Path) -> None:
    import socket

    supervisor = subprocess.Popen(
        argv(tmp_path),
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for((tmp_path / "log.jsonl").exists, 30, "the trainer")
        run_dir = runtime_dir / "stalwart" / "default"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        garbage_datagrams = (
            b"\xff\xfe\x00",
            b"STEP=banana\nCKPT_STALL_S=-1",
            b"=\n=\n",
            b"x" * 60000,
        )
        for garbage in garbage_datagrams:
            notify.sendto(garbage, str(run_dir / "notify.sock"))
        notify.close()
        replies = []
        for garbage in (b"{not json\n", b'{"cmd": "rm -rf"}\n', b"[1, 2]\n", b"\n"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
                control.settimeout(5)
                control.connect(str(run_dir / "control.sock"))
                control.sendall(garbage)
                replies.append(json.loads(control.recv(65536)))
        assert all(r["ok"] is False and r["error"] for r in replies)
        _, err = supervisor.communicate(timeout=120)
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=10) if supervisor.poll() is None else None
    assert supervisor.returncode == 0, err[-3000:]
    assert "malformed notify line" in err
    done = [e for e in events(tmp_path) if e["event"] == "done"]
    assert done[-1]["chain"] == reference_chain(STEPS)


def test_corruption_between_attempts_falls_back(tmp_path: Path, runtime_dir: Path) -> None:
    result = subprocess.run(
        argv(
            tmp_path,
            "--chaos",
            "--max-restarts",
            "2",
            "--set",
            "chaos.kill_after_min_s=1.0",
            "--set",
            "chaos.kill_after_max_s=1.2",
            "--set",
            "chaos.max_kills=1",
            trainer=(sys.executable, str(TRAINER), "--corrupt-on-attempt", "1"),
        ),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = events(tmp_path)
    (corrupted,) = [e["path"] for e in log if e["event"] == "corrupted"]
    resumes = [e["resume"] for e in log if e["event"] in ("start", "corrupt-resume")]
    assert corrupted not in resumes  # never resumed from the damaged checkpoint
    assert (tmp_path / "ck" / ".quarantine" / f"{Path(corrupted).name}-corrupt").is_dir()
    assert [e for e in log if e["event"] == "done"][-1]["chain"] == reference_chain(STEPS)


def test_poison_checkpoint_rolls_back_and_completes(tmp_path: Path, runtime_dir: Path) -> None:
    result = subprocess.run(
        argv(tmp_path, trainer=(sys.executable, str(TRAINER), "--poison-at", "300")),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = events(tmp_path)
    poisoned = {e["resume"] for e in log if e["event"] == "poisoned"}
    assert len(poisoned) == 1
    (bad,) = poisoned
    assert (tmp_path / "ck" / ".quarantine" / f"{Path(bad).name}-poison").is_dir()
    assert "is poison" in result.stderr
    assert [e for e in log if e["event"] == "done"][-1]["chain"] == reference_chain(STEPS)
