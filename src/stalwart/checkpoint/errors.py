"""Checkpoint errors. Each names the checkpoint and the file, says what was wrong and what to do."""

from __future__ import annotations

import enum

from stalwart.errors import CheckpointCorrupt, StalwartError


class Defect(enum.Enum):
    """What a failed verification found, in one word a person (or the journal) can group by."""

    MANIFEST_MISSING = "manifest missing"
    MANIFEST_INVALID = "manifest invalid"
    FILE_MISSING = "file missing"
    NOT_A_FILE = "not a regular file"
    SIZE_MISMATCH = "size mismatch"
    DIGEST_MISMATCH = "digest mismatch"
    UNSAFE_PATH = "unsafe path"
    SYMLINK = "symlink"
    UNREADABLE = "unreadable"
    FORMAT_INVALID = "format invalid"
    LIMIT_EXCEEDED = "limit exceeded"


RESUME_ADVICE = (
    "it is never resumed from; move it aside (stalwart quarantines it) and resume from the "
    "previous intact checkpoint"
)


class CheckpointInvalid(CheckpointCorrupt):
    """A checkpoint failed verification: `defect` says how, `file` where (None: the whole)."""

    def __init__(
        self,
        checkpoint: str,
        file: str | None,
        defect: Defect,
        detail: str,
        advice: str = RESUME_ADVICE,
    ) -> None:
        self.checkpoint = checkpoint
        self.file = file
        self.defect = defect
        self.detail = detail
        where = f"checkpoint {checkpoint}" + (f", file {file}" if file else "")
        super().__init__(f"{where}: {defect.value}: {detail}; {advice}")

    @property
    def reason(self) -> str:
        """The problem without the advice, for tables and journal rows."""
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.defect.value}: {self.detail}"


class CheckpointStoreError(StalwartError):
    """The checkpoint store could not do what was asked; nothing committed was changed."""

    def __init__(self, checkpoint: str, file: str | None, detail: str, advice: str) -> None:
        self.checkpoint = checkpoint
        self.file = file
        self.detail = detail
        where = f"checkpoint {checkpoint}" + (f", file {file}" if file else "")
        super().__init__(f"{where}: {detail}; {advice}")


class CommitFailed(CheckpointStoreError):
    """A save did not commit. Its staging directory is gone; earlier checkpoints are untouched."""


class DiskFull(CommitFailed):
    """A save ran out of space (ENOSPC, EDQUOT or EFBIG)."""


class StepExists(CommitFailed):
    """A checkpoint for this step is already committed; a committed checkpoint is never replaced."""


class NotStable(CheckpointStoreError):
    """A foreign checkpoint changed while it was being adopted; adopt it once writes stop."""
