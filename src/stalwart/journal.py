"""The journal: an SQLite file (WAL) in the state directory, the job's memory across
attempts, supervisor restarts and reboots.

The schema (migrations, row records) is in `journal_schema`; this module opens the file,
migrates it, and reads and writes it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stalwart.errors import JournalUnusable
from stalwart.journal_schema import (
    ATTEMPT_COLUMNS,
    MIGRATIONS,
    AttemptRecord,
    CheckpointRecord,
    IntervalRecord,
    QuarantineRecord,
    RunRecord,
    RunStatus,
    attempt_from_row,
    run_from_row,
)
from stalwart.types import Classification, ExitKind, ExitStatus

logger = logging.getLogger(__name__)

__all__ = [
    "FAILURES",
    "INTERRUPTED_REASON",
    "MIGRATIONS",
    "AttemptRecord",
    "CheckpointRecord",
    "IntervalRecord",
    "Journal",
    "QuarantineRecord",
    "RunRecord",
    "RunStatus",
]

INTERRUPTED_REASON = "supervisor stopped during this attempt (killed or machine restarted)"
FAILURES = (sqlite3.Error, OSError, OverflowError)
"""What a journal operation may fail with when the outside world fails (OverflowError: an
int beyond SQLite's 64 bits)."""


class Journal:
    """One connection to the journal file. Every write is its own durable transaction.

    Opening it is strict: a file it cannot use (a newer schema, not SQLite, not openable)
    raises JournalUnusable (exit 2), as does any failure before `survive_failures()`.
    After it (the supervisor calls it once set up) the outside world may fail without
    stopping supervision: a failed write (disk full, read-only file) is logged with its
    cause and what to do (once per cause), counted, and dropped; a failed read returns
    what it can (nothing). `ok`, `error` and `failed_writes` say how it is going.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._surviving = False
        self.failed_writes = 0
        self.failed_reads = 0
        self.error: str | None = None
        """The last failure, until a write succeeds again."""
        self._logged_causes: set[str] = set()
        """Failures already logged: a disk that stays full logs once, not once a write."""
        self._recovery_to_log = False
        self._next_attempts: dict[str, int] = {}
        """Attempt numbers handed out, so a lost write never makes one be handed out twice."""
        db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a record the supervisor acted on must survive a power cut.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db
            self._migrate()
        except (*FAILURES, JournalUnusable) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, JournalUnusable):
                raise
            raise JournalUnusable(self._open_problem(exc)) from None

    def _open_problem(self, exc: BaseException) -> str:
        if type(exc) is sqlite3.DatabaseError:  # not OperationalError: the content is wrong
            return (
                f"journal {self.path} is not a usable SQLite database ({exc}). It is the "
                "job's history: move it aside (a new one is then created) or give another "
                "--state-dir"
            )
        return (
            f"cannot open journal {self.path}: {exc}. {_advice(exc)}, or give another --state-dir"
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise JournalUnusable(
                f"journal {self.path} has schema version {version}, newer than this stalwart "
                f"understands ({len(MIGRATIONS)}): a newer stalwart wrote it, and it is left "
                "as it is. Upgrade stalwart, or give another --state-dir"
            )
        for index in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            # executescript() would commit on its own; run statement by statement instead.
            for statement in MIGRATIONS[index].split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={index + 1}")
            self._db.execute("COMMIT")

    # failures of the outside world

    def survive_failures(self) -> None:
        """From now on a failed write or read is logged, counted and survived (see above)."""
        self._surviving = True

    @property
    def ok(self) -> bool:
        """No failure since the last write that succeeded."""
        return self.error is None

    def _write(self, sql: str, params: Sequence[object] = ()) -> int:
        """One write (its own transaction); the rows it changed, 0 if it failed."""
        try:
            cursor = self._db.execute(sql, params)
        except FAILURES as exc:
            self._failed(exc, "write")
            return 0
        # An UPDATE that matched nothing (its row's INSERT was lost) wrote nothing: no proof.
        if self.error is not None and cursor.rowcount != 0:
            self.error = None
            if self._recovery_to_log:
                self._recovery_to_log = False
                logger.warning(
                    "journal %s is writable again (%d failed write(s) were not recorded)",
                    self.path,
                    self.failed_writes,
                )
        return cursor.rowcount

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query; none if it failed."""
        try:
            return self._db.execute(sql, params).fetchall()
        except FAILURES as exc:
            self._failed(exc, "read")
            return []

    def _failed(self, exc: BaseException, what: str) -> None:
        if not self._surviving:
            raise JournalUnusable(
                f"cannot {what} journal {self.path}: {exc}. {_advice(exc)}, or give "
                "another --state-dir"
            ) from exc
        if what == "write":
            self.failed_writes += 1
        else:
            self.failed_reads += 1
        self.error = f"{what} failed: {exc}"
        if str(exc) not in self._logged_causes:
            self._logged_causes.add(str(exc))
            self._recovery_to_log = True
            logger.error(
                "journal %s: a %s failed (%s); supervision goes on, but what happens is not "
                "recorded until it works again (`stalwart status` shows journal_ok false). "
                "%s",
                self.path,
                what,
                exc,
                _advice(exc),
            )
        else:
            logger.debug("journal %s: %s failed again: %s", self.path, what, exc)

    # runs

    def active_run(self, name: str) -> RunRecord | None:
        rows = self._rows(
            "SELECT run_id, name, command, status, started_unix, ended_unix FROM runs "
            "WHERE name = ? AND status = ? ORDER BY started_unix DESC LIMIT 1",
            (name, RunStatus.ACTIVE),
        )
        return run_from_row(rows[0]) if rows else None

    def start_run(self, name: str, command: Sequence[str], now_unix: float) -> RunRecord:
        """Reuse the job's active run (same id across attempts and reboots) or begin one."""
        active = self.active_run(name)
        if active is not None:
            return active
        run_id = uuid.uuid4().hex[:16]
        self._write(
            "INSERT INTO runs (run_id, name, command, status, started_unix) VALUES (?, ?, ?, ?, ?)",
            (run_id, name, json.dumps(list(command)), RunStatus.ACTIVE, now_unix),
        )
        return RunRecord(run_id, name, list(command), RunStatus.ACTIVE, now_unix, None)

    def end_run(self, run_id: str, status: str, now_unix: float) -> None:
        self._write(
            "UPDATE runs SET status = ?, ended_unix = ? WHERE run_id = ?",
            (status, now_unix, run_id),
        )

    def runs(self, name: str | None = None) -> list[RunRecord]:
        query = "SELECT run_id, name, command, status, started_unix, ended_unix FROM runs"
        params: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            params = (name,)
        return [run_from_row(row) for row in self._rows(query + " ORDER BY started_unix", params)]

    # attempts

    def next_attempt(self, run_id: str) -> int:
        rows = self._rows("SELECT MAX(attempt) FROM attempts WHERE run_id = ?", (run_id,))
        highest = rows[0][0] if rows else None
        recorded = 0 if highest is None else int(highest) + 1
        return max(recorded, self._next_attempts.get(run_id, 0))

    def close_interrupted(self, run_id: str, now_unix: float) -> int:
        """Attempts left open by a supervisor that died: record them as interrupted."""
        return self._write(
            "UPDATE attempts SET ended_unix = ?, kind = ?, retryable = 1, reason = ? "
            "WHERE run_id = ? AND ended_unix IS NULL",
            (now_unix, ExitKind.UNKNOWN.value, INTERRUPTED_REASON, run_id),
        )

    def start_attempt(
        self, run_id: str, attempt: int, pid: int | None, now_unix: float, resume_from: str
    ) -> None:
        self._next_attempts[run_id] = max(self._next_attempts.get(run_id, 0), attempt + 1)
        self._write(
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
        self._write(
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
        self._write(
            "UPDATE attempts SET ready_s = COALESCE(?, ready_s), "
            "last_step = COALESCE(?, last_step), peak_rss_bytes = COALESCE(?, peak_rss_bytes) "
            "WHERE run_id = ? AND attempt = ?",
            (ready_s, last_step, peak_rss_bytes, run_id, attempt),
        )

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        self._write(
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
        rows = self._rows(
            "SELECT c.run_id, c.attempt, c.step, c.path, c.size_bytes, c.stall_s, c.persist_s, "
            "c.reported_unix, c.source FROM checkpoints c JOIN runs r ON r.run_id = c.run_id "
            "WHERE r.name = ? ORDER BY c.id DESC LIMIT ?",
            (name, limit),
        )
        return [CheckpointRecord(*row) for row in reversed(rows)]

    def job_attempts(self, name: str, limit: int = 10_000) -> list[AttemptRecord]:
        """The job's ended attempts across its runs, oldest first (the newest `limit`)."""
        rows = self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts a JOIN runs r ON r.run_id = a.run_id "
            "WHERE r.name = ? AND a.ended_unix IS NOT NULL ORDER BY a.started_unix DESC LIMIT ?",
            (name, limit),
        )
        return [attempt_from_row(row) for row in reversed(rows)]

    def add_interval_decision(self, record: IntervalRecord) -> None:
        self._write(
            "INSERT INTO interval_decisions (run_id, decided_unix, interval_s, basis, reason, "
            "ckpt_s, persist_s, restart_s, mtbf_s, failures, optimum_s, waste_fraction) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            dataclasses.astuple(record),
        )

    def interval_decisions(self, name: str) -> list[IntervalRecord]:
        rows = self._rows(
            "SELECT d.run_id, d.decided_unix, d.interval_s, d.basis, d.reason, d.ckpt_s, "
            "d.persist_s, d.restart_s, d.mtbf_s, d.failures, d.optimum_s, d.waste_fraction "
            "FROM interval_decisions d JOIN runs r ON r.run_id = d.run_id WHERE r.name = ? "
            "ORDER BY d.id",
            (name,),
        )
        return [IntervalRecord(*row) for row in rows]

    def cached_verdict(self, root: str, name: str, mtime_ns: int, size_bytes: int) -> bool | None:
        rows = self._rows(
            "SELECT intact FROM verify_cache WHERE root = ? AND name = ? AND mtime_ns = ? "
            "AND size_bytes = ?",
            (root, name, mtime_ns, size_bytes),
        )
        return bool(rows[0][0]) if rows else None

    def cache_verdict(
        self, root: str, name: str, mtime_ns: int, size_bytes: int, intact: bool
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO verify_cache (root, name, mtime_ns, size_bytes, intact) "
            "VALUES (?, ?, ?, ?, ?)",
            (root, name, mtime_ns, size_bytes, int(intact)),
        )

    def add_quarantine(self, record: QuarantineRecord) -> None:
        self._write(
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
        return [QuarantineRecord(*row) for row in self._rows(query + " ORDER BY id", params)]

    def kind_counts(self, run_id: str) -> dict[str, int]:
        """How many attempts of the run ended in each kind."""
        rows = self._rows(
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
        rows = self._rows(query + " ORDER BY a.started_unix, a.attempt", params)
        return [attempt_from_row(row) for row in rows]


def _advice(exc: BaseException) -> str:
    """What to do about a failed journal operation, from SQLite's error name when it has one."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return "The disk holding it is full: free space there"
    if name.startswith("SQLITE_READONLY") or name == "SQLITE_CANTOPEN":
        return (
            "It (or its directory) is read-only or not accessible: check its permissions, "
            "`lsattr`, and whether the file system is mounted read-only"
        )
    if isinstance(exc, OverflowError):
        return "A value did not fit an SQLite INTEGER (64 bits); please report it"
    return "Check the state directory's free space, permissions and file system"
