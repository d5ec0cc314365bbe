"""`stalwart status|stop|checkpoint`: ask the running supervisor, or read the journal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from stalwart import paths
from stalwart.cli import status_all
from stalwart.cli.tables import fmt_bytes, fmt_time
from stalwart.errors import UsageError
from stalwart.journal import Journal


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for command, text in (
        ("status", "what the job is doing (from its supervisor, or its journal if stopped)"),
        ("stop", "drain the job: checkpoint if the trainer can, stop, exit 0"),
        ("checkpoint", "ask the trainer for a checkpoint at its next step"),
    ):
        sub = commands.add_parser(command, help=text)
        every = " (none: every job on this machine, one line each)" if command == "status" else ""
        sub.add_argument("name", nargs="?", help=f"job name, default 'default'{every}")
        sub.add_argument("--state-dir", type=Path, help="state directory of the job")
        sub.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_control(args: argparse.Namespace) -> int:
    """status / stop / checkpoint: ask the running supervisor; fall back to the journal."""
    if args.name is None:
        if args.command == "status" and args.state_dir is None:
            return status_all.cmd_status_all(args)
        args.name = "default"
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    snapshot = status_all.live_snapshot(state, args.command)
    if snapshot is None:
        journal_path = paths.job_journal(args.name, state)
        if args.command != "status":
            raise UsageError(f"job {args.name!r} is not running; nothing to {args.command}")
        snapshot = from_journal(journal_path, args.name)
    if not snapshot.get("ok", False):
        raise UsageError(f"supervisor refused: {snapshot.get('error')}")
    if args.json:
        sys.stdout.write(json.dumps(snapshot, indent=2, default=str) + "\n")
    else:
        if args.command == "stop":
            sys.stdout.write(f"{args.name}: stop requested; the trainer is draining\n")
        elif args.command == "checkpoint":
            sys.stdout.write(f"{args.name}: checkpoint requested\n")
        sys.stdout.write(render(snapshot))
    return 0


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
    if snapshot.get("journal_ok") is False:
        rows.append(("journal", f"NOT RECORDING: {snapshot.get('journal_error')}"))
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
