"""The journal's schema: its migrations, and the records its rows are read into.

Schema changes are appended to MIGRATIONS, never edited: `PRAGMA user_version`
says how many have been applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        command TEXT NOT NULL,
        status TEXT NOT NULL,
        started_unix REAL NOT NULL,
        ended_unix REAL
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        attempt INTEGER NOT NULL,
        pid INTEGER,
        started_unix REAL NOT NULL,
        ended_unix REAL,
        exit_code INTEGER,
        signal INTEGER,
        kind TEXT,
        retryable INTEGER,
        reason TEXT,
        uptime_s REAL,
        resume_from TEXT,
        decision TEXT,
        UNIQUE (run_id, attempt)
    );
    CREATE INDEX attempts_by_run ON attempts(run_id, attempt);
    """,
    """
    ALTER TABLE attempts ADD COLUMN ready_s REAL;
    ALTER TABLE attempts ADD COLUMN last_step INTEGER;
    ALTER TABLE attempts ADD COLUMN peak_rss_bytes INTEGER;
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        attempt INTEGER,
        step INTEGER,
        path TEXT,
        size_bytes INTEGER,
        stall_s REAL,
        persist_s REAL,
        reported_unix REAL NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE interval_decisions (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        decided_unix REAL NOT NULL,
        interval_s REAL NOT NULL,
        basis TEXT NOT NULL,
        reason TEXT NOT NULL,
        ckpt_s REAL,
        persist_s REAL,
        restart_s REAL,
        mtbf_s REAL,
        failures REAL,
        optimum_s REAL,
        waste_fraction REAL
    );
    """,
    """
    CREATE TABLE verify_cache (
        root TEXT NOT NULL,
        name TEXT NOT NULL,
        mtime_ns INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        intact INTEGER NOT NULL,
        PRIMARY KEY (root, name, mtime_ns, size_bytes)
    );
    CREATE TABLE quarantines (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        at_unix REAL NOT NULL
    );
    """,
)

ATTEMPT_COLUMNS = (
    "a.run_id, a.attempt, a.pid, a.started_unix, a.ended_unix, a.exit_code, a.signal, a.kind, "
    "a.retryable, a.reason, a.uptime_s, a.resume_from, a.decision, a.ready_s, a.last_step, "
    "a.peak_rss_bytes"
)


class RunStatus:
    ACTIVE = "active"
    COMPLETED = "completed"
    GAVE_UP = "gave_up"
    STOPPED = "stopped"


@dataclass(frozen=True)
class AttemptRecord:
    run_id: str
    attempt: int
    pid: int | None
    started_unix: float
    ended_unix: float | None
    exit_code: int | None
    signal: int | None
    kind: str | None
    retryable: bool | None
    reason: str | None
    uptime_s: float | None
    resume_from: str | None
    decision: str | None
    ready_s: float | None = None
    """Seconds from launch to the first step heartbeat (restart cost R)."""
    last_step: int | None = None
    peak_rss_bytes: int | None = None


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint the trainer reported (or the directory watcher observed)."""

    run_id: str
    attempt: int | None
    step: int | None
    path: str | None
    size_bytes: int | None
    stall_s: float | None
    persist_s: float | None
    reported_unix: float
    source: str
    """'trainer' (notify report) or 'observed' (checkpoint-directory watcher)."""


@dataclass(frozen=True)
class QuarantineRecord:
    """A checkpoint moved to .quarantine/, and why."""

    run_id: str
    name: str
    source: str
    destination: str
    reason: str
    detail: str
    at_unix: float


@dataclass(frozen=True)
class IntervalRecord:
    """One change of the advised checkpoint interval, with what it was computed from."""

    run_id: str
    decided_unix: float
    interval_s: float
    basis: str
    reason: str
    ckpt_s: float | None
    persist_s: float | None
    restart_s: float | None
    mtbf_s: float | None
    """NULL when infinite (no failures seen and the prior forgotten)."""
    failures: float | None
    optimum_s: float | None
    waste_fraction: float | None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    command: list[str]
    status: str
    started_unix: float
    ended_unix: float | None


def attempt_from_row(row: tuple[Any, ...]) -> AttemptRecord:
    return AttemptRecord(
        run_id=row[0],
        attempt=row[1],
        pid=row[2],
        started_unix=row[3],
        ended_unix=row[4],
        exit_code=row[5],
        signal=row[6],
        kind=row[7],
        retryable=None if row[8] is None else bool(row[8]),
        reason=row[9],
        uptime_s=row[10],
        resume_from=row[11],
        decision=row[12],
        ready_s=row[13],
        last_step=row[14],
        peak_rss_bytes=row[15],
    )


def run_from_row(row: tuple[str, str, str, str, float, float | None]) -> RunRecord:
    return RunRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])
