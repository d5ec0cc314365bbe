"""The remote copy of checkpoints (spot instances): a mirror that uploads each committed
checkpoint, restore on a fresh machine, remote retention and listing.

See DESIGN.md "Remote copy": `<remote>/step-000001234/...` mirrors the local layout, and
MANIFEST.json, uploaded last, is the remote commit.
"""

from stalwart.remote.config import RemoteConfig, retry_delay_s
from stalwart.remote.listing import (
    RemoteCheckpoint,
    RemoteEntry,
    RemoteState,
    group_objects,
    list_remote,
    scan_remote,
    size_problem,
)
from stalwart.remote.location import Remote, RemoteUnavailable, TransferAborted
from stalwart.remote.mirror import MirrorStatus, RemoteMirror, UploadOutcome, UploadResult
from stalwart.remote.restore import (
    RemoteSkip,
    RestoreOutcome,
    RestoreResult,
    pull,
    restore_newest,
)
from stalwart.remote.retention import delete_remote, plan_remote_retention, prune_remote
from stalwart.remote.upload import LocalCheckpointError, Uploaded, upload_checkpoint
from stalwart.remote.views import RemoteRow, drain_message, pull_target, remote_rows

__all__ = [
    "LocalCheckpointError",
    "MirrorStatus",
    "Remote",
    "RemoteCheckpoint",
    "RemoteConfig",
    "RemoteEntry",
    "RemoteMirror",
    "RemoteRow",
    "RemoteSkip",
    "RemoteState",
    "RemoteUnavailable",
    "RestoreOutcome",
    "RestoreResult",
    "TransferAborted",
    "UploadOutcome",
    "UploadResult",
    "Uploaded",
    "delete_remote",
    "drain_message",
    "group_objects",
    "list_remote",
    "plan_remote_retention",
    "prune_remote",
    "pull",
    "pull_target",
    "remote_rows",
    "restore_newest",
    "retry_delay_s",
    "scan_remote",
    "size_problem",
    "upload_checkpoint",
]
