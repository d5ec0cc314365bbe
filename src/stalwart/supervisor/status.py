"""The status snapshot of a running supervisor (`stalwart status`), as plain JSON-able data."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stalwart.supervisor.state import SupervisorState


def running_snapshot(supervisor: SupervisorState) -> dict[str, Any]:
    """Status of a running supervisor, as plain JSON-able data."""
    journal, run = supervisor.journal, supervisor.run_record
    assert journal is not None
    assert run is not None
    now_s = supervisor.clock.monotonic()
    advice = supervisor.advice.advice
    relaunch_at = supervisor.relaunch_at_s
    snapshot: dict[str, Any] = {
        "ok": True,
        "running": True,
        "name": supervisor.config.name,
        "run_id": run.run_id,
        "supervisor_pid": os.getpid(),
        "state": supervisor.machine.state.value,
        "interval_s": advice.interval_s,
        "checkpoint_now": advice.checkpoint_now,
        "drain": advice.drain,
        "ckpt_dir": str(supervisor.ckpt_dir),
        "failures": journal.kind_counts(run.run_id),
        "failures_in_window": supervisor.policy.failures_in_window,
        "next_launch_in_s": max(relaunch_at - now_s, 0.0) if relaunch_at is not None else None,
        "journal_ok": journal.ok,
        "journal_error": journal.error,
        "journal_failed_writes": journal.failed_writes,
    }
    attempt = supervisor.attempt
    if attempt is not None:
        stats = attempt.hang.stats(now_s)
        sample = attempt.last_sample
        snapshot.update(
            attempt=attempt.number,
            pid=attempt.pid,
            uptime_s=round(attempt.uptime_s(), 3),
            resume_from=attempt.resume_from,
            step=stats.last_step,
            steps_per_s=stats.steps_per_s,
            heartbeat_age_s=attempt.hang.silence_s(now_s),
            hang_threshold_s=attempt.hang.threshold_s(now_s),
            trainer_status=attempt.status_text,
            resources=dataclasses.asdict(sample) if sample is not None else None,
        )
    return snapshot
