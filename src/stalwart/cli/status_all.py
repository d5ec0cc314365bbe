"""`stalwart status` with no name: one line per job on this machine.

Jobs are the state dirs with a journal in the standard locations (`paths.known_state_dirs`:
the service's /var/lib/stalwart/*, then ./.stalwart/*). A running job answers over its
control socket; a stopped one is read from its journal. The newest checkpoint is found by
a quick look (sizes, format structure) plus the verdicts the supervisor cached in the
journal: nothing is hashed here, so a checkpoint not verified since it was written is shown
as unverified, never as intact.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart import paths
from stalwart.channels import control_socket
from stalwart.checkpoint import CheckpointState, list_checkpoints
from stalwart.cli.tables import table
from stalwart.errors import StalwartError
from stalwart.journal import AttemptRecord, Journal
from stalwart.supervisor.keeper import JournalVerifyCache
from stalwart.types import ExitKind

logger = logging.getLogger("stalwart")


@dataclass(frozen=True)
class NewestCheckpoint:
    name: str
    step: int | None
    state: str
    """`intact` (verified, cached in the journal) or `unverified` (a quick look only)."""
    age_s: float


@dataclass(frozen=True)
class JobLine:
    """One job's line in `stalwart status`."""

    name: str
    state_dir: Path
    running: bool
    state: str
    attempt: int | None = None
    step: int | None = None
    newest_checkpoint: NewestCheckpoint | None = None
    last_failure: str | None = None
    """`KIND: reason` of the last attempt that failed, if any did."""
    last_failure_age_s: float | None = None


def live_snapshot(state: Path, command: str = "status") -> dict[str, Any] | None:
    """The running supervisor's answer, or None when it is not running (or not reachable)."""
    runtime = paths.recorded_runtime_dir(state)
    if runtime is None or not (runtime / "control.sock").exists():
        return None
    try:
        return control_socket.request(runtime / "control.sock", command)
    except (OSError, ValueError) as exc:
        logger.debug("control socket unavailable: %s", exc)
        return None


def job_line(name: str, state: Path, now_unix: float) -> JobLine:
    """A job's line; a journal that cannot be read gives a line that says so."""
    snapshot = live_snapshot(state)
    try:
        with Journal(state / paths.JOURNAL_NAME) as journal:
            return _from_journal(name, state, journal, snapshot, now_unix)
    except StalwartError as exc:
        return JobLine(name, state, snapshot is not None, f"journal unreadable: {exc}")


def _from_journal(
    name: str,
    state: Path,
    journal: Journal,
    snapshot: Mapping[str, Any] | None,
    now_unix: float,
) -> JobLine:
    runs = journal.runs(name) or journal.runs()
    attempts = journal.attempts(runs[-1].run_id) if runs else []
    last = attempts[-1] if attempts else None
    if snapshot is not None and snapshot.get("ok"):
        status = str(snapshot.get("state"))
        attempt, step = snapshot.get("attempt"), snapshot.get("step")
        recorded = snapshot.get("ckpt_dir")
        ckpt_dir = Path(recorded) if recorded else paths.recorded_ckpt_dir(state)
    else:
        status = f"stopped (run {runs[-1].status})" if runs else "never run"
        attempt = last.attempt if last is not None else None
        step = last.last_step if last is not None else None
        ckpt_dir = paths.recorded_ckpt_dir(state)
    failure = _last_failure(journal.job_attempts(runs[-1].name) if runs else [])
    return JobLine(
        name=name,
        state_dir=state,
        running=snapshot is not None,
        state=status,
        attempt=attempt,
        step=step,
        newest_checkpoint=_newest(ckpt_dir, journal, now_unix) if ckpt_dir else None,
        last_failure=_describe(failure) if failure is not None else None,
        last_failure_age_s=(
            now_unix - failure.ended_unix if failure and failure.ended_unix else None
        ),
    )


def _last_failure(attempts: list[AttemptRecord]) -> AttemptRecord | None:
    for record in reversed(attempts):
        try:
            kind = ExitKind(record.kind)
        except ValueError:
            continue
        if kind.is_failure:
            return record
    return None


def _describe(record: AttemptRecord) -> str:
    return f"{record.kind}: {record.reason}" if record.reason else str(record.kind)


def _newest(root: Path, journal: Journal, now_unix: float) -> NewestCheckpoint | None:
    """The newest checkpoint that is not known to be broken (discovery's order)."""
    if not root.is_dir():
        return None
    cache = JournalVerifyCache(journal, root)
    for info in list_checkpoints(root, full=False, cache=cache):
        if not info.recognized or info.state not in (
            CheckpointState.INTACT,
            CheckpointState.UNVERIFIED,
        ):
            continue
        age_s = max(0.0, now_unix - info.mtime_ns / 1e9)
        return NewestCheckpoint(info.name, info.step, info.state.value, age_s)
    return None


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def render(lines: list[JobLine]) -> str:
    rows = []
    for line in lines:
        newest = line.newest_checkpoint
        checkpoint = "-"
        if newest is not None:
            unverified = "" if newest.state == "intact" else " (unverified)"
            checkpoint = f"{newest.name}{unverified}, {fmt_age(newest.age_s)}"
        failure = "-"
        if line.last_failure is not None:
            failure = f"{line.last_failure[:60]}, {fmt_age(line.last_failure_age_s)}"
        rows.append(
            [
                line.name,
                line.state,
                "-" if line.attempt is None else str(line.attempt),
                "-" if line.step is None else str(line.step),
                checkpoint,
                failure,
                str(line.state_dir),
            ]
        )
    headers = ["job", "state", "attempt", "step", "newest checkpoint", "last failure", "state dir"]
    return table(headers, rows)


def cmd_status_all(args: argparse.Namespace) -> int:
    now_unix = time.time()
    found = paths.known_state_dirs(os.environ)
    lines = [job_line(name, state, now_unix) for name, state in found]
    if args.json:
        jobs = [dataclasses.asdict(line) for line in lines]
        sys.stdout.write(json.dumps({"ok": True, "jobs": jobs}, indent=2, default=str) + "\n")
    elif not lines:
        where = f"{paths.system_state_root(os.environ)}/* or {Path.cwd() / '.stalwart'}/*"
        sys.stdout.write(f"no jobs found (no journal in {where})\n")
    else:
        sys.stdout.write(render(lines))
    return 0
