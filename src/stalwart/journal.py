"""The journal: an SQLite file (WAL) in the state directory, the job's memory across
attempts, supervisor restarts and reboots.

Schema changes are appended to MIGRATIONS, never edited: `PRAGMA user_version`
says how many have been applied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart.types import Classification, ExitKind, ExitStatus

logger = logging.getLogger(__name__)

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
INTERRUPTED_REASON = "supervisor stopped during this attempt (killed or machine restarted)"


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


class Journal:
    """One connection to the journal file. Every write is its own durable transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a record the supervisor acted on must survive a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"journal {self.path} has schema version {version}, newer than this stalwart "
                f"understands ({len(MIGRATIONS)}); upgrade stalwart or use another --state-dir"
            )
        for index in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            # executescript() would commit on its own; run statement by statement instead.
            for statement in MIGRATIONS[index].split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={index + 1}")
            self._db.execute("COMMIT")

    # runs

    def active_run(self, name: str) -> RunRecord | None:
        row = self._db.execute(
            "SELECT run_id, name, command, status, started_unix, ended_unix FROM runs "
            "WHERE name = ? AND status = ? ORDER BY started_unix DESC LIMIT 1",
            (name, RunStatus.ACTIVE),
        ).fetchone()
        return _run(row) if row else None

    def start_run(self, name: str, command: Sequence[str], now_unix: float) -> RunRecord:
        """Reuse the job's active run (same id across attempts and reboots) or begin one."""
        active = self.active_run(name)
        if active is not None:
            return active
        run_id = uuid.uuid4().hex[:16]
        self._db.execute(
            "INSERT INTO runs (run_id, name, command, status, started_unix) VALUES (?, ?, ?, ?, ?)",
            (run_id, name, json.dumps(list(command)), RunStatus.ACTIVE, now_unix),
        )
        return RunRecord(run_id, name, list(command), RunStatus.ACTIVE, now_unix, None)

    def end_run(self, run_id: str, status: str, now_unix: float) -> None:
        self._db.execute(
            "UPDATE runs SET status = ?, ended_unix = ? WHERE run_id = ?",
            (status, now_unix, run_id),
        )

    def runs(self, name: str | None = None) -> list[RunRecord]:
        query = "SELECT run_id, name, command, status, started_unix, ended_unix FROM runs"
        params: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            params = (name,)
        return [_run(row) for row in self._db.execute(query + " ORDER BY started_unix", params)]

    # attempts

    def next_attempt(self, run_id: str) -> int:
        (highest,) = self._db.execute(
            "SELECT MAX(attempt) FROM attempts WHERE run_id = ?", (run_id,)
        ).fetchone()
        return 0 if highest is None else int(highest) + 1

    def close_interrupted(self, run_id: str, now_unix: float) -> int:
        """Attempts left open by a supervisor that died: record them as interrupted."""
        cursor = self._db.execute(
            "UPDATE attempts SET ended_unix = ?, kind = ?, retryable = 1, reason = ? "
            "WHERE run_id = ? AND ended_unix IS NULL",
            (now_unix, ExitKind.UNKNOWN.value, INTERRUPTED_REASON, run_id),
        )
        return cursor.rowcount

    def start_attempt(
        self, run_id: str, attempt: int, pid: int | None, now_unix: float, resume_from: str
    ) -> None:
        self._db.execute(
            "INSERT INTO attempts (run_id, attempt, pid, started_unix, resume_from) "
            "VALUES (?, ?, ?, ?, ?)",
            (run_id, attempt, pid, now_unix, resume_from),
        )

    def end_attempt(
        self,
        run_id: str,
        attempt: int,
        *,
        now_unix: float,
        status: ExitStatus | None,
        verdict: Classification,
        uptime_s: float,
        decision: str,
    ) -> None:
        self._db.execute(
            "UPDATE attempts SET ended_unix = ?, exit_code = ?, signal = ?, kind = ?, "
            "retryable = ?, reason = ?, uptime_s = ?, decision = ? "
            "WHERE run_id = ? AND attempt = ?",
            (
                now_unix,
                status.code if status else None,
                status.signal if status else None,
                verdict.kind.value,
                int(verdict.retryable),
                verdict.reason,
                uptime_s,
                decision,
                run_id,
                attempt,
            ),
        )

    def set_attempt_progress(
        self,
        run_id: str,
        attempt: int,
        *,
        ready_s: float | None = None,
        last_step: int | None = None,
        peak_rss_bytes: int | None = None,
    ) -> None:
        """Fill in what was learned during an attempt (NULLs are left as they were)."""
        self._db.execute(
            "UPDATE attempts SET ready_s = COALESCE(?, ready_s), "
            "last_step = COALESCE(?, last_step), peak_rss_bytes = COALESCE(?, peak_rss_bytes) "
            "WHERE run_id = ? AND attempt = ?",
            (ready_s, last_step, peak_rss_bytes, run_id, attempt),
        )

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        self._db.execute(
            "INSERT INTO checkpoints (run_id, attempt, step, path, size_bytes, stall_s, "
            "persist_s, reported_unix, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.run_id,
                record.attempt,
                record.step,
                record.path,
                record.size_bytes,
                record.stall_s,
                record.persist_s,
                record.reported_unix,
                record.source,
            ),
        )

    def checkpoints(self, name: str, limit: int = 1000) -> list[CheckpointRecord]:
        """The job's reported checkpoints across its runs, oldest first (the newest `limit`)."""
        rows = self._db.execute(
            "SELECT c.run_id, c.attempt, c.step, c.path, c.size_bytes, c.stall_s, c.persist_s, "
            "c.reported_unix, c.source FROM checkpoints c JOIN runs r ON r.run_id = c.run_id "
            "WHERE r.name = ? ORDER BY c.id DESC LIMIT ?",
            (name, limit),
        ).fetchall()
        return [CheckpointRecord(*row) for row in reversed(rows)]

    def job_attempts(self, name: str, limit: int = 10_000) -> list[AttemptRecord]:
        """The job's ended attempts across its runs, oldest first (the newest `limit`)."""
        rows = self._db.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts a JOIN runs r ON r.run_id = a.run_id "
            "WHERE r.name = ? AND a.ended_unix IS NOT NULL ORDER BY a.started_unix DESC LIMIT ?",
            (name, limit),
        ).fetchall()
        return [_attempt(row) for row in reversed(rows)]

    def add_interval_decision(self, record: IntervalRecord) -> None:
        self._db.execute(
            "INSERT INTO interval_decisions (run_id, decided_unix, interval_s, basis, reason, "
            "ckpt_s, persist_s, restart_s, mtbf_s, failures, optimum_s, waste_fraction) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            dataclasses.astuple(record),
        )

    def interval_decisions(self, name: str) -> list[IntervalRecord]:
        rows = self._db.execute(
            "SELECT d.run_id, d.decided_unix, d.interval_s, d.basis, d.reason, d.ckpt_s, "
            "d.persist_s, d.restart_s, d.mtbf_s, d.failures, d.optimum_s, d.waste_fraction "
            "FROM interval_decisions d JOIN runs r ON r.run_id = d.run_id WHERE r.name = ? "
            "ORDER BY d.id",
            (name,),
        )
        return [IntervalRecord(*row) for row in rows]

    def cached_verdict(self, root: str, name: str, mtime_ns: int, size_bytes: int) -> bool | None:
        row = self._db.execute(
            "SELECT intact FROM verify_cache WHERE root = ? AND name = ? AND mtime_ns = ? "
            "AND size_bytes = ?",
            (root, name, mtime_ns, size_bytes),
        ).fetchone()
        return None if row is None else bool(row[0])

    def cache_verdict(
        self, root: str, name: str, mtime_ns: int, size_bytes: int, intact: bool
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO verify_cache (root, name, mtime_ns, size_bytes, intact) "
            "VALUES (?, ?, ?, ?, ?)",
            (root, name, mtime_ns, size_bytes, int(intact)),
        )

    def add_quarantine(self, record: QuarantineRecord) -> None:
        self._db.execute(
            "INSERT INTO quarantines (run_id, name, source, destination, reason, detail, at_unix) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            dataclasses.astuple(record),
        )

    def quarantines(self, run_id: str | None = None) -> list[QuarantineRecord]:
        query = "SELECT run_id, name, source, destination, reason, detail, at_unix FROM quarantines"
        params: tuple[str, ...] = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            params = (run_id,)
        return [QuarantineRecord(*row) for row in self._db.execute(query + " ORDER BY id", params)]

    def kind_counts(self, run_id: str) -> dict[str, int]:
        """How many attempts of the run ended in each kind."""
        rows = self._db.execute(
            "SELECT kind, COUNT(*) FROM attempts WHERE run_id = ? AND kind IS NOT NULL "
            "GROUP BY kind ORDER BY kind",
            (run_id,),
        )
        return {str(kind): int(count) for kind, count in rows}

    def attempts(self, run_id: str | None = None) -> list[AttemptRecord]:
        query = f"SELECT {ATTEMPT_COLUMNS} FROM attempts a"
        params: tuple[str, ...] = ()
        if run_id is not None:
            query += " WHERE a.run_id = ?"
            params = (run_id,)
        rows = self._db.execute(query + " ORDER BY a.started_unix, a.attempt", params)
        return [_attempt(row) for row in rows]


def _attempt(row: tuple[Any, ...]) -> AttemptRecord:
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


def _run(row: tuple[str, str, str, str, float, float | None]) -> RunRecord:
    return RunRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])
