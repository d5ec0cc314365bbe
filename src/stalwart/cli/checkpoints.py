"""`stalwart checkpoints list|verify|prune|best|pull`: the checkpoint store, and its remote copy,
from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stalwart import paths
from stalwart.checkpoint import (
    CheckpointInfo,
    CheckpointState,
    RetentionPolicy,
    apply_retention,
    disk_free_bytes,
    list_checkpoints,
    plan_retention,
    retention_items,
)
from stalwart.checkpoint.config import CheckpointConfig
from stalwart.checkpoint.pruning import find_best
from stalwart.cli.tables import fmt_bytes, fmt_time, table
from stalwart.errors import UsageError
from stalwart.policy.retention import recorded_metrics
from stalwart.remote import (
    Remote,
    RemoteConfig,
    RemoteUnavailable,
    RestoreOutcome,
    list_remote,
    pull,
    remote_rows,
)

T = TypeVar("T")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("checkpoints", help="list, verify and prune a job's checkpoints")
    actions = parser.add_subparsers(dest="ckpt_command", required=True, metavar="ACTION")
    for action, text in (
        ("list", "every checkpoint with its step, age, size, state and recorded metrics"),
        ("verify", "verify every checkpoint; exit 1 if any is corrupt"),
        ("prune", "delete old checkpoints by the retention policy (never the newest intact)"),
        ("best", "print the path of the intact checkpoint with the best recorded metric"),
        ("pull", "download a checkpoint from the remote copy, verify it, commit it locally"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name", nargs="?", default="default", help="job name")
        sub.add_argument("--dir", type=Path, help="checkpoint directory (instead of a job name)")
        sub.add_argument("--state-dir", type=Path, help="state directory of the job")
        sub.add_argument(
            "--glob",
            action="append",
            default=[],
            help="foreign checkpoint glob (default: the known framework layouts)",
        )
        if action in ("list", "verify"):
            sub.add_argument("--full", action="store_true", help="check every digest (slow)")
            sub.add_argument(
                "--memory-dir",
                type=Path,
                help="the job's memory tier too (default: the one its state dir records)",
            )
        if action in ("list", "pull"):
            sub.add_argument("--remote-url", help="remote copy URL (default: the job's)")
        if action == "list":
            sub.add_argument("--remote", action="store_true", help="list the remote copy")
        if action == "pull":
            sub.add_argument("--checkpoint", help="name (step-000001234) or step number")
            sub.add_argument("--latest", action="store_true", help="the newest that verifies")
        if action == "prune":
            sub.add_argument("--dry-run", action="store_true", help="print what would be deleted")
            sub.add_argument("--keep-last", type=int, default=CheckpointConfig().keep_last)
            sub.add_argument("--keep-every-steps", type=int)
            sub.add_argument("--keep-best", type=int, default=0, help="best K by --metric")
        if action in ("prune", "best"):
            sub.add_argument(
                "--metric", required=action == "best", help="recorded metric, e.g. val_loss"
            )
            sub.add_argument(
                "--mode", choices=("min", "max"), default="min", help="min: lower is better"
            )


def _recorded(args: argparse.Namespace, read: Callable[[Path], T | None], missing: str) -> T:
    """What the job's state dir records (`read`), or a UsageError: `missing`, formatted
    with the job `name` and the `state` dir."""
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    found = read(state)
    if found is None:
        raise UsageError(missing.format(name=repr(args.name), state=state))
    return found


def _root(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    return _recorded(
        args,
        paths.recorded_ckpt_dir,
        "no checkpoint directory recorded for job {name} in {state}; pass --dir",
    )


def run(args: argparse.Namespace) -> int:
    if args.ckpt_command == "list" and args.remote:
        return remote_list_cmd(args)
    root = _root(args)
    if args.ckpt_command == "pull":
        root.mkdir(parents=True, exist_ok=True)
        return remote_pull_cmd(args, root)
    if not root.is_dir():
        raise UsageError(f"checkpoint directory {root} does not exist")
    if args.ckpt_command == "prune":
        return _prune(args, root)
    if args.ckpt_command == "best":
        return _best(args, root)
    # Never the cache here: it cannot see silent bit rot, which keeps the mtime.
    tiered = [
        ("disk", info) for info in list_checkpoints(root, full=args.full, foreign_globs=args.glob)
    ]
    memory = _memory_root(args)
    if memory is not None and memory.is_dir():
        tiered = [("memory", info) for info in list_checkpoints(memory, full=args.full)] + tiered
    infos = [info for _, info in tiered]
    rows = [
        [
            tier,
            info.name,
            "-" if info.step is None else str(info.step),
            fmt_time(info.mtime_ns / 1e9),
            fmt_bytes(info.size_bytes),
            info.state.value.lower(),
            _metrics_text(info),
            info.reason[:70],
        ]
        for tier, info in tiered
    ]
    headers = ["tier", "name", "step", "modified", "size", "state", "metrics", "detail"]
    sys.stdout.write(table(headers, rows))
    if args.ckpt_command == "verify":
        corrupt = [i for i in infos if i.state is CheckpointState.CORRUPT]
        level = "full" if args.full else "quick (sizes; add --full for digests)"
        sys.stdout.write(f"{len(infos)} entries, {len(corrupt)} corrupt; verification: {level}\n")
        return 1 if corrupt else 0
    return 0


def _memory_root(args: argparse.Namespace) -> Path | None:
    """The memory tier to list beside the disk: --memory-dir, else (for a job name, not
    --dir) the one the job's state dir records while it keeps one."""
    if args.memory_dir is not None:
        return Path(args.memory_dir)
    if args.dir is not None:
        return None
    return paths.recorded_memory_dir(paths.find_state_dir(args.name, args.state_dir, os.environ))


def _metrics_text(info: CheckpointInfo) -> str:
    """Recorded metrics, `name=value` (4 significant digits), or '-'."""
    metrics = recorded_metrics(info.manifest.meta if info.manifest is not None else None)
    text = " ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))
    return text[:60] or "-"


def _best(args: argparse.Namespace, root: Path) -> int:
    found = find_best(root, args.metric, mode=args.mode, foreign_globs=args.glob)
    if found is None:
        sys.stderr.write(
            f"no intact checkpoint in {root} records the metric {args.metric!r} "
            "(`stalwart checkpoints list` shows the recorded metrics)\n"
        )
        return 1
    sys.stdout.write(f"{found[0].path}\n")
    return 0


def _prune(args: argparse.Namespace, root: Path) -> int:
    if args.keep_best and not args.metric:
        raise UsageError("--keep-best needs --metric (the metric that ranks checkpoints)")
    infos = list_checkpoints(root, full=True, foreign_globs=args.glob)
    policy = RetentionPolicy(
        keep_last=args.keep_last,
        keep_every_steps=args.keep_every_steps,
        keep_best=args.keep_best,
        best_metric=args.metric,
        best_mode=args.mode,
    )
    plan = plan_retention(retention_items(infos), policy, free_bytes=disk_free_bytes(root))
    for item, why in plan.kept:
        sys.stdout.write(f"keep   {item.name} ({why.value})\n")
    for item in plan.delete:
        sys.stdout.write(f"{'would delete' if args.dry_run else 'delete'} {item.name}\n")
    for warning in plan.warnings:
        sys.stdout.write(f"warning: {warning}\n")
    if not args.dry_run and plan.delete:
        apply_retention(root, plan)
    return 0


# --- the remote copy: `list --remote` and `pull` -------------------------------------


def remote_url(args: argparse.Namespace) -> str:
    if args.remote_url:
        return str(args.remote_url)
    return _recorded(
        args,
        paths.recorded_remote_url,
        "job {name} has no remote copy recorded in {state}; pass --remote-url",
    )


def remote_list_cmd(args: argparse.Namespace) -> int:
    url = remote_url(args)
    try:
        checkpoints = list_remote(Remote.open(url))
    except (RemoteUnavailable, OSError) as exc:
        raise UsageError(f"cannot list {url}: {exc}") from None
    rows = [
        [
            row.name,
            str(row.step),
            fmt_time(row.created_unix),
            fmt_bytes(row.size_bytes),
            row.state.value,
            str(row.files),
        ]
        for row in remote_rows(checkpoints)
    ]
    sys.stdout.write(f"remote copy {url}\n")
    sys.stdout.write(table(["name", "step", "created", "size", "state", "files"], rows))
    return 0


def remote_pull_cmd(args: argparse.Namespace, root: Path) -> int:
    url = remote_url(args)
    result = pull(RemoteConfig(url=url), root, None if args.latest else args.checkpoint)
    sys.stdout.write(result.message + "\n")
    return 0 if result.outcome is RestoreOutcome.RESTORED else 1
