"""`stalwart history`: a job's attempts from its journal."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stalwart import paths
from stalwart.cli.tables import fmt_time, table
from stalwart.journal import Journal
from stalwart.types import signal_name


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = commands.add_parser("history", help="list a job's attempts from its journal")
    history.add_argument("name", nargs="?", default="default", help="job name")
    history.add_argument("--state-dir", type=Path, help="state directory of the job")
    history.add_argument("--all", action="store_true", help="every run, not just the latest")


def cmd_history(args: argparse.Namespace) -> int:
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    journal_path = paths.job_journal(args.name, state)
    with Journal(journal_path) as journal:
        runs = journal.runs(args.name) or journal.runs()
        if not args.all:
            runs = runs[-1:]
        for run in runs:
            sys.stdout.write(
                f"run {run.run_id} ({run.name}): {run.status}, "
                f"started {fmt_time(run.started_unix)}\n  command: {' '.join(run.command)}\n"
            )
            rows = []
            for a in journal.attempts(run.run_id):
                if a.signal is not None:
                    ended = signal_name(a.signal)
                elif a.exit_code is not None:
                    ended = f"exit {a.exit_code}"
                else:
                    ended = "-" if a.ended_unix else "running"
                rows.append(
                    [
                        str(a.attempt),
                        fmt_time(a.started_unix),
                        f"{a.uptime_s:.1f}" if a.uptime_s is not None else "-",
                        ended,
                        a.kind or "-",
                        (a.decision or a.reason or "-")[:80],
                    ]
                )
            sys.stdout.write(
                table(["attempt", "started", "uptime_s", "ended", "kind", "decision"], rows)
            )
    return 0
