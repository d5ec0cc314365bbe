"""`stalwart checkpoints list --remote` and `stalwart checkpoints pull`: the remote copy by hand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stalwart import paths
from stalwart.errors import UsageError
from stalwart.remote import (
    Remote,
    RemoteConfig,
    RemoteUnavailable,
    RestoreOutcome,
    list_remote,
    pull,
    remote_rows,
)
from stalwart.status_view import fmt_bytes, fmt_time, table


def remote_url(args: argparse.Namespace) -> str:
    if args.remote_url:
        return str(args.remote_url)
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    recorded = paths.recorded_remote_url(state)
    if recorded is None:
        raise UsageError(
            f"job {args.name!r} has no remote copy recorded in {state}; pass --remote-url"
        )
    return recorded


def list_cmd(args: argparse.Namespace) -> int:
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


def pull_cmd(args: argparse.Namespace, root: Path) -> int:
    url = remote_url(args)
    result = pull(RemoteConfig(url=url), root, None if args.latest else args.checkpoint)
    sys.stdout.write(result.message + "\n")
    return 0 if result.outcome is RestoreOutcome.RESTORED else 1
