"""The advice file (supervisor -> trainer), replaced atomically so readers never see half."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Advice:
    interval_s: float
    """Advised time between checkpoints."""
    checkpoint_now: int = 0
    """A counter: when it grows, save at the next step boundary."""
    drain: bool = False
    """Save, then exit 0."""
    deadline_unix: float | None = None
    """When the machine goes away (preemption), if known."""
    memory_interval_s: float | None = None
    """Advised time between saves to the memory tier (None: no memory tier)."""
    skip_batches: int = 0
    """The current attempt's data skip past its resume checkpoint (a divergence rollback;
    also in its $STALWART_DATA_SKIP)."""


def write_advice(path: Path, advice: Advice) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(asdict(advice), handle)
    os.replace(tmp, path)


class AdviceBoard:
    """The advice the trainer reads: every change is published at once, atomically."""

    def __init__(self, interval_s: float) -> None:
        self.advice = Advice(interval_s=interval_s)
        self.path: Path | None = None

    def publish_to(self, path: Path) -> None:
        self.path = path
        self._write()

    def _update(self, **changes: object) -> None:
        self.advice = dataclasses.replace(self.advice, **changes)  # type: ignore[arg-type]
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            write_advice(self.path, self.advice)

    def set_interval(self, interval_s: float) -> None:
        if interval_s != self.advice.interval_s:
            self._update(interval_s=interval_s)

    def set_memory_interval(self, interval_s: float | None) -> None:
        if interval_s != self.advice.memory_interval_s:
            self._update(memory_interval_s=interval_s)

    def set_skip_batches(self, batches: int) -> None:
        if batches != self.advice.skip_batches:
            self._update(skip_batches=batches)

    def request_checkpoint(self) -> None:
        self._update(checkpoint_now=self.advice.checkpoint_now + 1)

    def drain(self, *, checkpoint: bool = False, deadline_unix: float | None = None) -> None:
        """Save (now, if `checkpoint`), then exit 0; a deadline says when the machine goes."""
        self._update(
            drain=True,
            checkpoint_now=self.advice.checkpoint_now + (1 if checkpoint else 0),
            deadline_unix=deadline_unix if deadline_unix is not None else self.advice.deadline_unix,
        )
