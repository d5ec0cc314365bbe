"""The remote copy of checkpoints (spot instances): a mirror that uploads each committed
checkpoint, restore on a fresh machine, remote retention and listing.

See DESIGN.md "Remote copy": `<remote>/step-000001234/...` mirrors the local layout, and
MANIFEST.json, uploaded last, is the remote commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart import lazy

# Exports load on first use, so importing one submodule (e.g. the config section) does not
# load the others and what they import.
_EXPORTS: dict[str, str] = {
    "LocalCheckpointError": "stalwart.remote.upload",
    "MirrorStatus": "stalwart.remote.mirror",
    "Remote": "stalwart.remote.location",
    "RemoteCheckpoint": "stalwart.remote.listing",
    "RemoteConfig": "stalwart.remote.config",
    "RemoteEntry": "stalwart.remote.listing",
    "RemoteMirror": "stalwart.remote.mirror",
    "RemoteRow": "stalwart.remote.views",
    "RemoteSkip": "stalwart.remote.restore",
    "RemoteState": "stalwart.remote.listing",
    "RemoteUnavailable": "stalwart.remote.location",
    "RestoreOutcome": "stalwart.remote.restore",
    "RestoreResult": "stalwart.remote.restore",
    "TransferAborted": "stalwart.remote.location",
    "UploadOutcome": "stalwart.remote.mirror",
    "UploadResult": "stalwart.remote.mirror",
    "Uploaded": "stalwart.remote.upload",
    "delete_remote": "stalwart.remote.retention",
    "drain_message": "stalwart.remote.views",
    "group_objects": "stalwart.remote.listing",
    "list_remote": "stalwart.remote.listing",
    "plan_remote_retention": "stalwart.remote.retention",
    "prune_remote": "stalwart.remote.retention",
    "pull": "stalwart.remote.restore",
    "pull_target": "stalwart.remote.views",
    "remote_rows": "stalwart.remote.views",
    "restore_newest": "stalwart.remote.restore",
    "retry_delay_s": "stalwart.remote.config",
    "scan_remote": "stalwart.remote.listing",
    "size_problem": "stalwart.remote.listing",
    "upload_checkpoint": "stalwart.remote.upload",
}

if TYPE_CHECKING:
    from stalwart.remote.config import RemoteConfig as RemoteConfig
    from stalwart.remote.config import retry_delay_s as retry_delay_s
    from stalwart.remote.listing import RemoteCheckpoint as RemoteCheckpoint
    from stalwart.remote.listing import RemoteEntry as RemoteEntry
    from stalwart.remote.listing import RemoteState as RemoteState
    from stalwart.remote.listing import group_objects as group_objects
    from stalwart.remote.listing import list_remote as list_remote
    from stalwart.remote.listing import scan_remote as scan_remote
    from stalwart.remote.listing import size_problem as size_problem
    from stalwart.remote.location import Remote as Remote
    from stalwart.remote.location import RemoteUnavailable as RemoteUnavailable
    from stalwart.remote.location import TransferAborted as TransferAborted
    from stalwart.remote.mirror import MirrorStatus as MirrorStatus
    from stalwart.remote.mirror import RemoteMirror as RemoteMirror
    from stalwart.remote.mirror import UploadOutcome as UploadOutcome
    from stalwart.remote.mirror import UploadResult as UploadResult
    from stalwart.remote.restore import RemoteSkip as RemoteSkip
    from stalwart.remote.restore import RestoreOutcome as RestoreOutcome
    from stalwart.remote.restore import RestoreResult as RestoreResult
    from stalwart.remote.restore import pull as pull
    from stalwart.remote.restore import restore_newest as restore_newest
    from stalwart.remote.retention import delete_remote as delete_remote
    from stalwart.remote.retention import plan_remote_retention as plan_remote_retention
    from stalwart.remote.retention import prune_remote as prune_remote
    from stalwart.remote.upload import LocalCheckpointError as LocalCheckpointError
    from stalwart.remote.upload import Uploaded as Uploaded
    from stalwart.remote.upload import upload_checkpoint as upload_checkpoint
    from stalwart.remote.views import RemoteRow as RemoteRow
    from stalwart.remote.views import drain_message as drain_message
    from stalwart.remote.views import pull_target as pull_target
    from stalwart.remote.views import remote_rows as remote_rows

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


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())
