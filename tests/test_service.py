"""Running as a service: the unit, sd_notify, control socket, status/stop/checkpoint, install."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.supervised import environment, records, run_argv, stalwart_argv

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "stalwart@.service"
HEARTBEAT = Path(__file__).parent / "trainers" / "heartbeat.py"
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _resolvable_unit(tmp_path: Path) -> Path:
    stalwart = Path(sys.executable).parent / "stalwart"
    unit = tmp_path / "stalwart@.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/stalwart", str(stalwart)))
    return unit


def test_unit_is_the_packaged_one() -> None:
    packaged = ROOT / "src" / "stalwart" / "data" / "stalwart@.service"
    assert UNIT.read_text() == packaged.read_text()


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_resolvable_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_systemd_analyze
def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--threshold=25",
            str(_resolvable_unit(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1]
    print(summary)
    assert result.returncode == 0, result.stdout
    score = float(re.search(r"exposure level for .*: ([\d.]+) (\w+)", summary)[1])
    assert score <= 2.5
    assert " OK" in summary


def _fake_notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(65536).decode())
        except TimeoutError:
            return got


def test_sd_notify_ready_watchdog_status_stopping(tmp_path: Path, runtime_dir: Path) -> None:
    notify = _fake_notify_socket(runtime_dir / "systemd.sock")
    record, ready = tmp_path / "a.jsonl", tmp_path / "ready"
    env = environment(runtime_dir)
    env.update(NOTIFY_SOCKET=str(runtime_dir / "systemd.sock"), WATCHDOG_USEC="200000")
    argv = run_argv(
        tmp_path / "state",
        ["--set", "monitor.sample_interval_s=0.1"],
        ["--record", str(record), "--ready", str(ready), "--run-s", "60"],
    )
    supervisor = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    messages: list[str] = []
    try:
        wait_for(ready.exists, 20, "trainer to start")

        def pinged_enough() -> bool:
            messages.extend(_drain(notify))
            return sum("WATCHDOG=1" in m for m in messages) >= 3

        wait_for(pinged_enough, 10, "three watchdog pings")
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=20)
        assert supervisor.returncode == 0, err
        messages.extend(_drain(notify))
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
        notify.close()
    joined = "\n".join(messages)
    # The loop pings the watchdog from its start, also while the resume is being verified
    # (issue 17); the first message that is not a ping is READY, with the status.
    first = next(m for m in messages if m != "WATCHDOG=1")
    assert first.startswith("READY=1\nSTATUS=")
    assert "attempt 0" in first
    assert "STOPPING=1" in joined and "EXTEND_TIMEOUT_USEC=" in joined
    assert joined.index("READY=1") < joined.index("STOPPING=1")
    (seen,) = records(record)
    assert "NOTIFY_SOCKET" not in seen["env"]


def _start_heartbeating(tmp_path: Path, runtime_dir: Path) -> subprocess.Popen[str]:
    argv = stalwart_argv(
        "run",
        "--name",
        "svc",
        "--state-dir",
        str(tmp_path / "state"),
        "--",
        sys.executable,
        str(HEARTBEAT),
        "--steps",
        "100000",
        "--step-s",
        "0.01",
    )
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(tmp_path: Path, runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stalwart_argv(*args, "svc", "--state-dir", str(tmp_path / "state")),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_status_checkpoint_stop_over_the_control_socket(tmp_path: Path, runtime_dir: Path) -> None:
    supervisor = _start_heartbeating(tmp_path, runtime_dir)
    try:
        snapshot: dict = {}

        def stepping() -> bool:
            nonlocal snapshot
            result = _cli(tmp_path, runtime_dir, "status", "--json")
            if result.returncode != 0:
                return False
            snapshot = json.loads(result.stdout)
            return snapshot.get("running") and (snapshot.get("step") or 0) > 5

        wait_for(stepping, 20, "status to show steps")
        assert snapshot["pid"] > 0 and snapshot["state"] in ("STARTING", "RUNNING")
        assert snapshot["supervisor_pid"] == supervisor.pid
        human = _cli(tmp_path, runtime_dir, "status")
        assert "trainer pid" in human.stdout and str(snapshot["pid"]) in human.stdout
        checkpoint = _cli(tmp_path, runtime_dir, "checkpoint", "--json")
        assert json.loads(checkpoint.stdout)["checkpoint_now"] == 1
        stop = _cli(tmp_path, runtime_dir, "stop")
        assert stop.returncode == 0 and "stop requested" in stop.stdout
        _, err = supervisor.communicate(timeout=30)
        assert supervisor.returncode == 0, err
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
    after = _cli(tmp_path, runtime_dir, "status", "--json")
    stopped = json.loads(after.stdout)
    assert stopped["running"] is False and stopped["last_attempt_kind"] == "STOPPED"
    assert _cli(tmp_path, runtime_dir, "stop").returncode == 2  # nothing to stop


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_control_refuses_other_users(tmp_path: Path, runtime_dir: Path) -> None:
    supervisor = _start_heartbeating(tmp_path, runtime_dir)
    sock_path = runtime_dir / "stalwart" / "svc" / "control.sock"
    try:
        wait_for(sock_path.exists, 20, "the control socket")
        for path in (runtime_dir, runtime_dir / "stalwart", sock_path.parent):
            os.chmod(path, 0o755)
        os.chmod(sock_path, 0o666)  # let the intruder reach it at all: only SO_PEERCRED stops it
        intruder = textwrap.dedent(
            f"""
            import os, pathlib
            # imported while still allowed to read the venv
            from stalwart.channels import control_socket as control
            os.setgid(65534); os.setuid(65534)
            print(control.request(pathlib.Path({str(sock_path)!r}), "stop"))
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", intruder],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "permission denied for uid 65534" in out.stdout, out.stderr
        status = _cli(tmp_path, runtime_dir, "status", "--json")
        assert json.loads(status.stdout)["running"] is True  # the stop was not obeyed
        assert supervisor.poll() is None
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.communicate(timeout=30)


def test_second_run_reports_pid_of_the_first(tmp_path: Path, runtime_dir: Path) -> None:
    supervisor = _start_heartbeating(tmp_path, runtime_dir)
    try:
        wait_for((tmp_path / "state" / "runtime_dir").exists, 20, "first to start")
        second = subprocess.run(
            stalwart_argv(
                "run",
                "--name",
                "svc",
                "--state-dir",
                str(tmp_path / "state"),
                "--",
                sys.executable,
                "-c",
                "pass",
            ),
            cwd=tmp_path,
            env=environment(runtime_dir),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 2
        assert f"already running (pid {supervisor.pid}" in second.stderr
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)


def test_log_formats(tmp_path: Path, runtime_dir: Path) -> None:
    env = environment(runtime_dir)
    env["JOURNAL_STREAM"] = "8:1234"
    base = ["run", "--state-dir", str(tmp_path / "s1"), "--", sys.executable, "-c", "pass"]
    journal = subprocess.run(
        stalwart_argv(*base),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    first = journal.stderr.splitlines()[0]
    assert re.match(r"<6>\w", first), first  # priority, no timestamp
    as_json = subprocess.run(
        stalwart_argv(
            "--log-format",
            "json",
            "run",
            "--state-dir",
            str(tmp_path / "s2"),
            "--",
            sys.executable,
            "-c",
            "pass",
        ),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    entries = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])


def test_install_dry_run_and_into_a_root(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: gpu1\ncommand: python train.py\n")
    dry = subprocess.run(
        stalwart_argv(
            "systemd", "install", "gpu1", str(job), "--root", str(tmp_path / "root"), "--dry-run"
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "would write" in dry.stdout and "etc/stalwart/gpu1.yaml" in dry.stdout
    assert not (tmp_path / "root").exists()
    done = subprocess.run(
        stalwart_argv(
            "systemd",
            "install",
            "gpu1",
            str(job),
            "--root",
            str(tmp_path / "root"),
            "--executable",
            "/opt/venv/bin/stalwart",
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    installed_unit = tmp_path / "root" / "etc" / "systemd" / "system" / "stalwart@.service"
    assert (
        "ExecStart=/opt/venv/bin/stalwart run /etc/stalwart/%i.yaml" in installed_unit.read_text()
    )
    assert (tmp_path / "root" / "etc" / "stalwart" / "gpu1.yaml").read_text() == job.read_text()
    assert "systemctl enable --now stalwart@gpu1" in done.stdout
    job.write_text("command: python train.py\nrestart: {max_restarts: -1}\n")
    bad = subprocess.run(
        stalwart_argv("systemd", "install", "gpu1", str(job), "--root", str(tmp_path / "r2")),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "restart.max_restarts" in bad.stderr
    assert not (tmp_path / "r2").exists()
