"""`stalwart checkpoints list|verify|prune`: the checkpoint store from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stalwart import paths
from stalwart.checkpoint import (
    CheckpointState,
    RetentionPolicy,
    apply_retention,
    disk_free_bytes,
    list_checkpoints,
    plan_retention,
    retention_items,
)
from stalwart.config import CheckpointConfig
from stalwart.errors import UsageError
from stalwart.status_view import fmt_bytes, fmt_time, table


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("checkpoints", help="list, verify and prune a job's checkpoints")
    actions = parser.add_subparsers(dest="ckpt_command", required=True, metavar="ACTION")
    for action, text in (
        ("list", "every checkpoint with its step, age, size and state"),
        ("verify", "verify every checkpoint; exit 1 if any is corrupt"),
        ("prune", "delete old checkpoints by the retention policy (never the newest intact)"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name", nargs="?", default="default", help="job name")
        sub.add_argument("--dir", type=Path, help="checkpoint directory (instead of a job name)")
        sub.add_argument("--state-dir", type=Path, help="state directory of the job")
        sub.add_argument("--glob", action="append", default=[], help="foreign checkpoint glob")
        if action in ("list", "verify"):
            sub.add_argument("--full", action="store_true", help="check every digest (slow)")
        if action == "prune":
            sub.add_argument("--dry-run", action="store_true", help="print what would be deleted")
            sub.add_argument("--keep-last", type=int, default=CheckpointConfig().keep_last)
            sub.add_argument("--keep-every-steps", type=int)


def _root(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    recorded = paths.recorded_ckpt_dir(state)
    if recorded is None:
        raise UsageError(
            f"no checkpoint directory recorded for job {args.name!r} in {state}; pass --dir"
        )
    return recorded


def run(args: argparse.Namespace) -> int:
    root = _root(args)
    if not root.is_dir():
        raise UsageError(f"checkpoint directory {root} does not exist")
    if args.ckpt_command == "prune":
        return _prune(args, root)
    # Never the cache here: it cannot see silent bit rot, which keeps the mtime.
    infos = list_checkpoints(root, full=args.full, foreign_globs=args.glob)
    rows = [
        [
            info.name,
            "-" if info.step is None else str(info.step),
            fmt_time(info.mtime_ns / 1e9),
            fmt_bytes(info.size_bytes),
            info.state.value.lower(),
            info.reason[:70],
        ]
        for info in infos
    ]
    sys.stdout.write(table(["name", "step", "modified", "size", "state", "detail"], rows))
    if args.ckpt_command == "verify":
        corrupt = [i for i in infos if i.state is CheckpointState.CORRUPT]
        level = "full" if args.full else "quick (sizes; add --full for digests)"
        sys.stdout.write(f"{len(infos)} entries, {len(corrupt)} corrupt; verification: {level}\n")
        return 1 if corrupt else 0
    return 0


def _prune(args: argparse.Namespace, root: Path) -> int:
    infos = list_checkpoints(root, full=True, foreign_globs=args.glob)
    plan = plan_retention(
        retention_items(infos),
        RetentionPolicy(keep_last=args.keep_last, keep_every_steps=args.keep_every_steps),
        free_bytes=disk_free_bytes(root),
    )
    for item, why in plan.kept:
        sys.stdout.write(f"keep   {item.name} ({why.value})\n")
    for item in plan.delete:
        sys.stdout.write(f"{'would delete' if args.dry_run else 'delete'} {item.name}\n")
    for warning in plan.warnings:
        sys.stdout.write(f"warning: {warning}\n")
    if not args.dry_run and plan.delete:
        apply_retention(root, plan)
    return 0
