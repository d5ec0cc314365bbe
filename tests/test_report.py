"""`stalwart report` and `stalwart simulate` on the command line; the summary as a pure function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stalwart.cli.report import summarize
from stalwart.journal import AttemptRecord, CheckpointRecord, IntervalRecord
from tests.supervised import environment, stalwart_argv


def _attempt(n: int, start: float, end: float, kind: str) -> AttemptRecord:
    return AttemptRecord("r", n, 1, start, end, 1, None, kind, True, "x", end - start, None, None)


def test_summary_counts_lost_work_after_the_last_checkpoint() -> None:
    attempts = [
        _attempt(0, 0.0, 100.0, "INFRA"),
        _attempt(1, 110.0, 200.0, "PREEMPTED"),
        _attempt(2, 210.0, 300.0, "COMPLETED"),
    ]
    checkpoints = [
        CheckpointRecord("r", 0, 10, None, None, 2.0, 3.0, 60.0, "trainer"),
        CheckpointRecord("r", 2, 20, None, None, 1.0, 1.0, 250.0, "trainer"),
    ]
    decisions = [
        IntervalRecord("r", 0.0, 600.0, "optimum", "why", 2.0, 3.0, 1.0, 3600.0, 1.0, 600.0, 0.01)
    ]
    summary = summarize(attempts, checkpoints, decisions, now_unix=400.0)
    assert summary.failures_by_kind == {"INFRA": 1, "PREEMPTED": 1}
    assert [(lost.attempt, lost.seconds) for lost in summary.lost] == [(0, 40.0), (1, 90.0)]
    assert summary.span_s == 300.0
    assert summary.uptime_fraction == 280.0 / 300.0
    assert summary.checkpoint_stall_s == 3.0
    assert summary.interval_s == 600.0


def test_report_cli_writes_summary_and_picture(tmp_path: Path, runtime_dir: Path) -> None:
    subprocess.run(
        stalwart_argv(
            "run",
            "--name",
            "rep",
            "--state-dir",
            str(tmp_path / "state"),
            "--set",
            "restart.backoff_initial_s=0",
            "--",
            sys.executable,
            "-c",
            "import os, sys; sys.exit(int(os.environ['STALWART_ATTEMPT']) < 2)",
        ),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        timeout=60,
        check=True,
    )
    out = tmp_path / "report.png"
    result = subprocess.run(
        stalwart_argv("report", "rep", "--state-dir", str(tmp_path / "state"), "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "job rep: 3 attempt(s)" in result.stdout
    assert "failures         UNKNOWN 2" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_cli() -> None:
    result = subprocess.run(
        stalwart_argv("simulate", "--runs", "3", "--work-h", "24"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "oracle" in result.stdout and "stalwart adaptive" in result.stdout
