"""The checkpoint store: atomic commits, verified resume, quarantine, retention, foreign
formats and observation. See DESIGN.md "Checkpoint on disk" for the on-disk contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart import lazy

# `quarantine` is both a submodule and a function: importing the submodule would bind the
# package attribute to the module, so the function is bound here, eagerly (it is light).
from stalwart.checkpoint.quarantine import quarantine

# Exports load on first use: a trainer that only writes checkpoints (the store) should not
# pay for importing discovery, retention, the watchdog observer and psutil.
_EXPORTS: dict[str, str] = {
    "Adopted": "stalwart.checkpoint.observe",
    "CacheKey": "stalwart.checkpoint.verify",
    "CheckpointInfo": "stalwart.checkpoint.discovery",
    "CheckpointInvalid": "stalwart.checkpoint.errors",
    "CheckpointObserver": "stalwart.checkpoint.observe",
    "CheckpointState": "stalwart.types",
    "CheckpointStore": "stalwart.checkpoint.store",
    "CheckpointStoreError": "stalwart.checkpoint.errors",
    "CommitFailed": "stalwart.checkpoint.errors",
    "CommitStage": "stalwart.checkpoint.store",
    "Committed": "stalwart.checkpoint.store",
    "Defect": "stalwart.checkpoint.errors",
    "Discovery": "stalwart.checkpoint.discovery",
    "DiskFull": "stalwart.checkpoint.errors",
    "EntryKind": "stalwart.checkpoint.layout",
    "FileEntry": "stalwart.checkpoint.manifest",
    "ForeignFormat": "stalwart.checkpoint.foreign",
    "FormatLimits": "stalwart.checkpoint.foreign",
    "FormatStatus": "stalwart.checkpoint.foreign",
    "FormatVerdict": "stalwart.checkpoint.foreign",
    "FsOps": "stalwart.checkpoint.fsops",
    "HashAlgo": "stalwart.checkpoint.manifest",
    "Keep": "stalwart.policy.retention",
    "Manifest": "stalwart.checkpoint.manifest",
    "MemoryVerifyCache": "stalwart.checkpoint.discovery",
    "NotStable": "stalwart.checkpoint.errors",
    "QuarantineReason": "stalwart.checkpoint.layout",
    "Quarantined": "stalwart.checkpoint.quarantine",
    "ResumeDecision": "stalwart.checkpoint.discovery",
    "RetentionItem": "stalwart.policy.retention",
    "RetentionPlan": "stalwart.policy.retention",
    "RetentionPolicy": "stalwart.policy.retention",
    "StepExists": "stalwart.checkpoint.errors",
    "Transaction": "stalwart.checkpoint.store",
    "Verdict": "stalwart.checkpoint.verify",
    "VerifiedBy": "stalwart.checkpoint.discovery",
    "VerifyCache": "stalwart.checkpoint.discovery",
    "VerifyLevel": "stalwart.checkpoint.verify",
    "WriteKind": "stalwart.checkpoint.observe",
    "WriteObserved": "stalwart.checkpoint.observe",
    "WriteTracker": "stalwart.checkpoint.observe",
    "adopt": "stalwart.checkpoint.observe",
    "apply_retention": "stalwart.checkpoint.pruning",
    "check_foreign": "stalwart.checkpoint.foreign",
    "checkpoint_name": "stalwart.checkpoint.layout",
    "disk_free_bytes": "stalwart.checkpoint.pruning",
    "examine": "stalwart.checkpoint.discovery",
    "find_newest_intact": "stalwart.checkpoint.discovery",
    "list_checkpoints": "stalwart.checkpoint.discovery",
    "parse_manifest": "stalwart.checkpoint.manifest",
    "parse_step": "stalwart.checkpoint.layout",
    "plan_retention": "stalwart.policy.retention",
    "prepare_resume": "stalwart.checkpoint.discovery",
    "remove_leftovers": "stalwart.checkpoint.discovery",
    "retention_items": "stalwart.checkpoint.pruning",
    "scan": "stalwart.checkpoint.layout",
    "verify_checkpoint": "stalwart.checkpoint.verify",
}

if TYPE_CHECKING:
    from stalwart.checkpoint.discovery import (
        CheckpointInfo as CheckpointInfo,
    )
    from stalwart.checkpoint.discovery import (
        Discovery as Discovery,
    )
    from stalwart.checkpoint.discovery import (
        MemoryVerifyCache as MemoryVerifyCache,
    )
    from stalwart.checkpoint.discovery import (
        ResumeDecision as ResumeDecision,
    )
    from stalwart.checkpoint.discovery import (
        VerifiedBy as VerifiedBy,
    )
    from stalwart.checkpoint.discovery import (
        VerifyCache as VerifyCache,
    )
    from stalwart.checkpoint.discovery import (
        examine as examine,
    )
    from stalwart.checkpoint.discovery import (
        find_newest_intact as find_newest_intact,
    )
    from stalwart.checkpoint.discovery import (
        list_checkpoints as list_checkpoints,
    )
    from stalwart.checkpoint.discovery import (
        prepare_resume as prepare_resume,
    )
    from stalwart.checkpoint.discovery import (
        remove_leftovers as remove_leftovers,
    )
    from stalwart.checkpoint.errors import (
        CheckpointInvalid as CheckpointInvalid,
    )
    from stalwart.checkpoint.errors import (
        CheckpointStoreError as CheckpointStoreError,
    )
    from stalwart.checkpoint.errors import (
        CommitFailed as CommitFailed,
    )
    from stalwart.checkpoint.errors import (
        Defect as Defect,
    )
    from stalwart.checkpoint.errors import (
        DiskFull as DiskFull,
    )
    from stalwart.checkpoint.errors import (
        NotStable as NotStable,
    )
    from stalwart.checkpoint.errors import (
        StepExists as StepExists,
    )
    from stalwart.checkpoint.foreign import (
        ForeignFormat as ForeignFormat,
    )
    from stalwart.checkpoint.foreign import (
        FormatLimits as FormatLimits,
    )
    from stalwart.checkpoint.foreign import (
        FormatStatus as FormatStatus,
    )
    from stalwart.checkpoint.foreign import (
        FormatVerdict as FormatVerdict,
    )
    from stalwart.checkpoint.foreign import (
        check_foreign as check_foreign,
    )
    from stalwart.checkpoint.fsops import (
        FsOps as FsOps,
    )
    from stalwart.checkpoint.layout import EntryKind as EntryKind
    from stalwart.checkpoint.layout import QuarantineReason as QuarantineReason
    from stalwart.checkpoint.layout import checkpoint_name as checkpoint_name
    from stalwart.checkpoint.layout import parse_step as parse_step
    from stalwart.checkpoint.layout import scan as scan
    from stalwart.checkpoint.manifest import (
        FileEntry as FileEntry,
    )
    from stalwart.checkpoint.manifest import (
        HashAlgo as HashAlgo,
    )
    from stalwart.checkpoint.manifest import (
        Manifest as Manifest,
    )
    from stalwart.checkpoint.manifest import (
        parse_manifest as parse_manifest,
    )
    from stalwart.checkpoint.observe import (
        Adopted as Adopted,
    )
    from stalwart.checkpoint.observe import (
        CheckpointObserver as CheckpointObserver,
    )
    from stalwart.checkpoint.observe import (
        WriteKind as WriteKind,
    )
    from stalwart.checkpoint.observe import (
        WriteObserved as WriteObserved,
    )
    from stalwart.checkpoint.observe import (
        WriteTracker as WriteTracker,
    )
    from stalwart.checkpoint.observe import (
        adopt as adopt,
    )
    from stalwart.checkpoint.pruning import apply_retention as apply_retention
    from stalwart.checkpoint.pruning import disk_free_bytes as disk_free_bytes
    from stalwart.checkpoint.pruning import retention_items as retention_items
    from stalwart.checkpoint.quarantine import (
        Quarantined as Quarantined,
    )
    from stalwart.checkpoint.quarantine import (
        quarantine as quarantine,
    )
    from stalwart.checkpoint.store import (
        CheckpointStore as CheckpointStore,
    )
    from stalwart.checkpoint.store import (
        CommitStage as CommitStage,
    )
    from stalwart.checkpoint.store import (
        Committed as Committed,
    )
    from stalwart.checkpoint.store import (
        Transaction as Transaction,
    )
    from stalwart.checkpoint.verify import (
        CacheKey as CacheKey,
    )
    from stalwart.checkpoint.verify import (
        Verdict as Verdict,
    )
    from stalwart.checkpoint.verify import (
        VerifyLevel as VerifyLevel,
    )
    from stalwart.checkpoint.verify import (
        verify_checkpoint as verify_checkpoint,
    )
    from stalwart.policy.retention import Keep as Keep
    from stalwart.policy.retention import RetentionItem as RetentionItem
    from stalwart.policy.retention import RetentionPlan as RetentionPlan
    from stalwart.policy.retention import RetentionPolicy as RetentionPolicy
    from stalwart.policy.retention import plan_retention as plan_retention
    from stalwart.types import CheckpointState as CheckpointState

__all__ = [
    "Adopted",
    "CacheKey",
    "CheckpointInfo",
    "CheckpointInvalid",
    "CheckpointObserver",
    "CheckpointState",
    "CheckpointStore",
    "CheckpointStoreError",
    "CommitFailed",
    "CommitStage",
    "Committed",
    "Defect",
    "Discovery",
    "DiskFull",
    "EntryKind",
    "FileEntry",
    "ForeignFormat",
    "FormatLimits",
    "FormatStatus",
    "FormatVerdict",
    "FsOps",
    "HashAlgo",
    "Keep",
    "Manifest",
    "MemoryVerifyCache",
    "NotStable",
    "QuarantineReason",
    "Quarantined",
    "ResumeDecision",
    "RetentionItem",
    "RetentionPlan",
    "RetentionPolicy",
    "StepExists",
    "Transaction",
    "Verdict",
    "VerifiedBy",
    "VerifyCache",
    "VerifyLevel",
    "WriteKind",
    "WriteObserved",
    "WriteTracker",
    "adopt",
    "apply_retention",
    "check_foreign",
    "checkpoint_name",
    "disk_free_bytes",
    "examine",
    "find_newest_intact",
    "list_checkpoints",
    "parse_manifest",
    "parse_step",
    "plan_retention",
    "prepare_resume",
    "quarantine",
    "remove_leftovers",
    "retention_items",
    "scan",
    "verify_checkpoint",
]


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())
