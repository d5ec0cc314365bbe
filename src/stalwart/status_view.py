"""How `stalwart status` reads: from the running supervisor, or from the journal when stopped."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stalwart.journal import Journal

if TYPE_CHECKING:
    from stalwart.supervisor.state import SupervisorState


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def fmt_time(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


def fmt_bytes(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


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


def from_journal(journal_path: Path, name: str) -> dict[str, Any]:
    """Status of a job whose supervisor is not running."""
    with Journal(journal_path) as journal:
        runs = journal.runs(name) or journal.runs()
        if not runs:
            return {"ok": True, "running": False, "name": name, "state": "never run"}
        run = runs[-1]
        attempts = journal.attempts(run.run_id)
        failures = journal.kind_counts(run.run_id)
    snapshot: dict[str, Any] = {
        "ok": True,
        "running": False,
        "name": name,
        "run_id": run.run_id,
        "state": f"stopped (run {run.status})",
        "failures": failures,
    }
    if attempts:
        last = attempts[-1]
        snapshot.update(
            attempt=last.attempt,
            last_attempt_ended=fmt_time(last.ended_unix),
            last_attempt_kind=last.kind,
            last_attempt_reason=last.reason,
        )
    return snapshot


def render(snapshot: dict[str, Any]) -> str:
    """The human view of a status snapshot."""
    rows: list[tuple[str, str]] = [
        ("job", str(snapshot.get("name"))),
        ("state", str(snapshot["state"])),
    ]

    def add(label: str, key: str, fmt: str = "{}") -> None:
        value = snapshot.get(key)
        if value is not None and value != "":
            rows.append((label, fmt.format(value)))

    add("run id", "run_id")
    add("supervisor pid", "supervisor_pid")
    add("attempt", "attempt")
    add("trainer pid", "pid")
    add("uptime", "uptime_s", "{:.1f} s")
    add("step", "step")
    add("steps/s", "steps_per_s", "{:.2f}")
    add("last heartbeat", "heartbeat_age_s", "{:.1f} s ago")
    add("hang threshold", "hang_threshold_s", "{:.0f} s")
    add("trainer status", "trainer_status")
    add("resumed from", "resume_from")
    add("checkpoint interval", "interval_s", "{:g} s")
    add("next launch in", "next_launch_in_s", "{:.1f} s")
    add("last attempt ended", "last_attempt_ended")
    add("last attempt", "last_attempt_kind")
    add("reason", "last_attempt_reason")
    failures = snapshot.get("failures") or {}
    if failures:
        rows.append(("attempts by kind", ", ".join(f"{k} {v}" for k, v in failures.items())))
    resources = snapshot.get("resources")
    if isinstance(resources, dict):
        rows.append(("memory (tree RSS)", fmt_bytes(resources.get("tree_rss_bytes"))))
        rows.append(("cpu (tree)", f"{resources.get('tree_cpu_percent', 0):.0f} %"))
        rows.append(("disk free (ckpt dir)", fmt_bytes(resources.get("disk_free_bytes"))))
        for gpu in resources.get("gpus") or []:
            rows.append(
                (
                    f"gpu {gpu['index']}",
                    f"{fmt_bytes(gpu['memory_used_bytes'])} / "
                    f"{fmt_bytes(gpu['memory_total_bytes'])}, "
                    f"{gpu['utilization_percent']:.0f} % busy",
                )
            )
    width = max(len(label) for label, _ in rows)
    return "".join(f"{label.ljust(width)}  {value}\n" for label, value in rows)
