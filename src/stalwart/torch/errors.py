"""Errors of the trainer-side checkpointer. Each names the checkpoint, says what was wrong
and what to do."""

from __future__ import annotations

from collections.abc import Sequence

from stalwart.errors import CheckpointCorrupt, StalwartError

MAX_LISTED = 20
"""Keys listed per kind of mismatch; the rest are counted."""


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


class StateMismatch(StalwartError):
    """The checkpoint does not fit the objects it is restored into; nothing was loaded."""

    def __init__(
        self,
        checkpoint: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        components: Sequence[str] = (),
    ) -> None:
        self.checkpoint = checkpoint
        self.missing = tuple(missing)
        """Model keys the checkpoint lacks."""
        self.unexpected = tuple(unexpected)
        """Checkpoint keys the model lacks."""
        self.mismatched = tuple(mismatched)
        """'key: checkpoint [shape] vs model [shape]' for keys in both whose shapes differ."""
        self.components = tuple(components)
        """Other problems: a component absent from the checkpoint, optimizer groups that differ."""
        text = f"checkpoint {checkpoint} does not match what it is restored into:"
        if self.missing:
            text += _listing("model keys missing from the checkpoint", self.missing)
        if self.unexpected:
            text += _listing("unexpected keys in the checkpoint", self.unexpected)
        if self.mismatched:
            text += _listing("shape mismatches", self.mismatched)
        if self.components:
            text += _listing("other mismatches", self.components)
        text += (
            "\nnothing was loaded; restore into the same model and optimizer setup it was "
            "saved from (or pass strict=False to allow missing and unexpected keys)"
        )
        super().__init__(text)


class UnsafeCheckpoint(CheckpointCorrupt):
    """A checkpoint's pickled part asks to run code; it was refused unexecuted."""

    def __init__(self, checkpoint: str, file: str, detail: str) -> None:
        self.checkpoint = checkpoint
        self.file = file
        self.detail = detail
        super().__init__(
            f"checkpoint {checkpoint}, file {file}: refused: it holds pickled objects that "
            f"torch.load(weights_only=True) does not allow ({detail}); nothing in it was "
            "executed. A checkpoint written by stalwart.torch never contains such objects: "
            "treat this one as tampered with, move it aside and resume from an earlier one"
        )


class NotATorchCheckpoint(StalwartError):
    """The checkpoint was not written by stalwart.torch.Checkpointer (or is from a newer one)."""

    def __init__(self, checkpoint: str, detail: str) -> None:
        self.checkpoint = checkpoint
        self.detail = detail
        super().__init__(
            f"checkpoint {checkpoint}: {detail}; Checkpointer.restore reads checkpoints that "
            "Checkpointer wrote; load other formats yourself from STALWART_RESUME_FROM"
        )
