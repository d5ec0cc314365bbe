"""`stalwart notify test NAME|CONFIG.yaml`: send one test notification to the job's URLs."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from pydantic import ValidationError

from stalwart import config, paths
from stalwart.errors import UsageError
from stalwart.notify.config import NOTIFY_POINTER, NotifyConfig
from stalwart.observation import JobInfo


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    notify = commands.add_parser("notify", help="notifications: send a test one")
    actions = notify.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    test = actions.add_parser(
        "test",
        help="send one test notification to every URL of a job",
        description="TARGET is a job config (YAML) or the name of a job that has run "
        "(its state dir remembers its notify section).",
    )
    test.add_argument("target", nargs="?", default="default", help="job name or CONFIG.yaml")
    test.add_argument("--state-dir", type=Path, help="state directory of the job")
    test.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override"
    )


def _load(args: argparse.Namespace) -> tuple[str, Path, NotifyConfig]:
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") or target.is_file():
        job = config.load(target, command=["true"], overrides=args.set)
        state = paths.state_dir(job.name, args.state_dir or job.state_dir, os.environ)
        return job.name, state, job.notify
    state = paths.find_state_dir(args.target, args.state_dir, os.environ)
    pointer = state / NOTIFY_POINTER
    try:
        recorded = json.loads(pointer.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"job {args.target!r} has no notify section recorded in {state} (it never ran "
            "with notify.urls); give its config file instead: stalwart notify test CONFIG.yaml"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {pointer}: {exc}") from None
    data = recorded.get("notify", {})
    for assignment in args.set:
        config.apply_override(data, assignment.removeprefix("notify."))
    try:
        section = NotifyConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{pointer}: not a valid notify section: {exc}") from None
    return str(recorded.get("name", args.target)), state, section


def cmd_notify(args: argparse.Namespace) -> int:
    from stalwart.notify.message import trial_message
    from stalwart.notify.sender import Sender, build_targets

    name, state, section = _load(args)
    if not section.urls:
        raise UsageError(f"job {name!r} has no notify.urls: nothing to test")
    targets = build_targets(section, os.environ)
    job = JobInfo(name, socket.gethostname(), "test", state, state / "checkpoints", 0)
    sender = Sender(targets, section)
    sender.submit(trial_message(job))
    sender.close()
    counts = sender.snapshot()
    sent = sum(n for (_, outcome), n in counts.items() if outcome == "sent")
    for target in targets:
        sys.stdout.write(f"{target.key}: {target.shown}\n")
    sys.stdout.write(f"{name}: test notification delivered to {sent} of {len(targets)} URL(s)\n")
    return 0 if sent == len(targets) else 1
