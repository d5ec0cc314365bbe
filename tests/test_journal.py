"""The journal on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stalwart.errors import JournalUnusable
from stalwart.journal import INTERRUPTED_REASON, Journal, RunStatus
from stalwart.types import Classification, ExitKind, ExitStatus


def test_runs_are_reused_until_ended(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        first = journal.start_run("job", ["python", "t.py"], 100.0)
        assert journal.start_run("job", ["python", "t.py"], 200.0).run_id == first.run_id
        assert journal.start_run("other", ["x"], 200.0).run_id != first.run_id
    with Journal(path) as journal:  # a reboot: same file, same run
        assert journal.start_run("job", ["python", "t.py"], 300.0).run_id == first.run_id
        journal.end_run(first.run_id, RunStatus.COMPLETED, 400.0)
        assert journal.start_run("job", ["python", "t.py"], 500.0).run_id != first.run_id


def test_attempts_recorded_and_interrupted_ones_closed(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        run = journal.start_run("job", ["x"], 1.0)
        assert journal.next_attempt(run.run_id) == 0
        journal.start_attempt(run.run_id, 0, 123, 2.0, "")
        journal.end_attempt(
            run.run_id,
            0,
            now_unix=5.0,
            status=ExitStatus(None, 9),
            verdict=Classification(ExitKind.OOM, True, "killed"),
            uptime_s=3.0,
            decision="restart",
        )
        journal.start_attempt(run.run_id, 1, 124, 6.0, "/ck/step-1")
        assert journal.next_attempt(run.run_id) == 2
        assert journal.close_interrupted(run.run_id, 9.0) == 1
        first, second = journal.attempts(run.run_id)
    assert (first.signal, first.kind, first.retryable, first.uptime_s) == (9, "OOM", True, 3.0)
    assert second.reason == INTERRUPTED_REASON and second.ended_unix == 9.0
    assert second.resume_from == "/ck/step-1"


def test_wal_mode_and_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA user_version=999")
    db.close()
    with pytest.raises(JournalUnusable, match="newer than this stalwart"):
        Journal(path)
