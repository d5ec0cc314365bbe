"""The advice file (supervisor -> trainer), replaced atomically so readers never see half."""

from __future__ import annotations

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


def write_advice(path: Path, advice: Advice) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(asdict(advice), handle)
    os.replace(tmp, path)
