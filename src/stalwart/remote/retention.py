"""Remote retention: keep the newest N complete remote checkpoints.

The decision is the local store's `plan_retention` over the remote listing (complete ones
count as verified, the rest as unverified), so the same rules hold: the newest complete one
is never deleted, nor the one just uploaded (pinned), nor incomplete ones newer than the
newest complete (an upload may be in progress). Deletion removes the manifest first, so
a half-deleted remote checkpoint is never chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from stalwart.checkpoint.layout import MANIFEST_NAME
from stalwart.policy.retention import RetentionItem, RetentionPlan, RetentionPolicy, plan_retention
from stalwart.remote.listing import RemoteCheckpoint, RemoteState, list_remote
from stalwart.remote.location import Remote
from stalwart.types import CheckpointState

logger = logging.getLogger(__name__)


def remote_items(
    checkpoints: Sequence[RemoteCheckpoint], protect: Collection[str] = ()
) -> list[RetentionItem]:
    """A remote listing as retention's input; `protect` names are pinned."""
    return [
        RetentionItem(
            name=c.name,
            path=Path(c.name),
            step=c.step,
            size_bytes=c.size_bytes,
            state=(
                CheckpointState.INTACT
                if c.state is RemoteState.COMPLETE
                else CheckpointState.UNVERIFIED
            ),
            pinned=c.name in protect,
        )
        for c in checkpoints
    ]


def plan_remote_retention(
    checkpoints: Sequence[RemoteCheckpoint], keep_last: int, *, protect: Collection[str] = ()
) -> RetentionPlan:
    """Which remote checkpoints to delete (pure)."""
    return plan_retention(
        remote_items(checkpoints, protect), RetentionPolicy(keep_last=max(1, keep_last))
    )


def delete_remote(remote: Remote, checkpoint: RemoteCheckpoint) -> None:
    """Delete one remote checkpoint: its manifest first, then everything else."""
    if MANIFEST_NAME in checkpoint.objects:
        remote.remove([f"{checkpoint.name}/{MANIFEST_NAME}"])
    remote.remove_tree(checkpoint.name)


def prune_remote(
    remote: Remote, keep_last: int, *, protect: Collection[str] = ()
) -> tuple[str, ...]:
    """List, plan and delete; failures are logged (the next upload tries again)."""
    try:
        checkpoints = list_remote(remote)
    except Exception as exc:
        logger.warning("remote retention skipped: cannot list %s: %s", remote.url, exc)
        return ()
    plan = plan_remote_retention(checkpoints, keep_last, protect=protect)
    by_name = {c.name: c for c in checkpoints}
    deleted = []
    for item in plan.delete:
        checkpoint = by_name[item.name]
        try:
            delete_remote(remote, checkpoint)
        except Exception as exc:
            logger.warning("could not delete %s: %s", checkpoint.url, exc)
            continue
        logger.info("pruned remote checkpoint %s (%s)", checkpoint.url, checkpoint.state.value)
        deleted.append(item.name)
    return tuple(deleted)
