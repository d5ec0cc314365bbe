"""Pure helpers for the CLI and the supervisor's messages: rows for `checkpoints list
--remote`, the argument of `checkpoints pull`, and what to say when a drain ends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stalwart.checkpoint.layout import checkpoint_name, parse_step
from stalwart.remote.listing import RemoteCheckpoint, RemoteState
from stalwart.remote.mirror import UploadResult

LATEST = "latest"


@dataclass(frozen=True)
class RemoteRow:
    """One line of `stalwart checkpoints list --remote`."""

    name: str
    step: int
    state: RemoteState
    size_bytes: int
    files: int
    """Files listed by the manifest (0 without one)."""
    created_unix: float | None
    run_id: str | None
    attempt: int | None
    reason: str


def remote_rows(checkpoints: Sequence[RemoteCheckpoint]) -> list[RemoteRow]:
    """The listing as table rows, in the listing's order (newest first)."""
    rows = []
    for c in checkpoints:
        m = c.manifest
        rows.append(
            RemoteRow(
                name=c.name,
                step=c.step,
                state=c.state,
                size_bytes=c.size_bytes,
                files=len(m.files) if m else 0,
                created_unix=m.created_unix if m else None,
                run_id=m.run_id if m else None,
                attempt=m.attempt if m else None,
                reason=c.reason,
            )
        )
    return rows


def pull_target(text: str | None) -> str | None:
    """`checkpoints pull` argument -> a checkpoint name, or None for the newest that
    verifies ("latest", or no argument). ValueError for anything else."""
    if text is None or text.strip().lower() == LATEST:
        return None
    text = text.strip()
    if parse_step(text) is not None:
        return text
    if text.isdigit():
        return checkpoint_name(int(text))
    raise ValueError(
        f"{text!r} is not a checkpoint: give a name like step-000001234, a step number, or --latest"
    )


def drain_message(
    emergency: str | None,
    finished: UploadResult | None,
    newest_durable: str | None,
    *,
    deadline_s: float | None = None,
) -> str:
    """What the supervisor says about the remote copy when a preemption drain ends.

    `emergency`: the emergency checkpoint's name (None: none was saved); `finished`: its
    upload result if one came before the deadline; `newest_durable`: the mirror's newest
    durable checkpoint (what the next machine will resume from).
    """
    resumes = (
        f"the next machine will resume from {newest_durable}"
        if newest_durable
        else "no checkpoint is in the remote copy: the next machine will start from scratch"
    )
    if emergency is None:
        return f"no emergency checkpoint was saved; {resumes}"
    if finished is not None and finished.ok:
        took = f" in {finished.persist_s:.1f} s" if finished.persist_s is not None else ""
        return f"emergency checkpoint {emergency} reached the remote copy{took}; {resumes}"
    if finished is not None:
        why = f": {finished.error}" if finished.error else ""
        return (
            f"emergency checkpoint {emergency} did NOT reach the remote copy "
            f"({finished.outcome.value}{why}); {resumes}"
        )
    within = f" within {deadline_s:.0f} s" if deadline_s is not None else " before the deadline"
    return f"emergency checkpoint {emergency} did NOT reach the remote copy{within}; {resumes}"
