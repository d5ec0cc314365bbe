"""Reading the hash-chain trainer's log: shared by the chaos suite and bench/soak.py."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def reference_chain(steps: int) -> str:
    """The digest an uninterrupted run of `steps` steps ends with."""
    chain = hashlib.sha256(b"seed").hexdigest()
    for step in range(1, steps + 1):
        chain = hashlib.sha256(f"{chain}:{step}".encode()).hexdigest()
    return chain


def read_log(path: Path) -> list[dict[str, Any]]:
    """The trainer's events; a line cut short by a kill is skipped."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@dataclass(frozen=True)
class Interruption:
    """An attempt that ended before training did, and what the next attempt had to redo."""

    ended_wall: float
    """Wall time of the attempt's last step."""
    resumed_wall: float
    """Wall time the next attempt started."""
    lost_s: float


def interruptions(log: list[dict[str, Any]]) -> list[Interruption]:
    """For each interrupted attempt, the work it did that the next attempt had to redo:
    from the step the next attempt resumed from (or the attempt's own start, if it
    never got past it) to the attempt's last step. Attempts are keyed by (run, attempt):
    a run that gave up is followed by a new run whose attempts count from 0 again."""
    by_attempt: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in log:
        by_attempt.setdefault((entry.get("run", ""), entry["attempt"]), []).append(entry)
    found = []
    for current, following in itertools.pairwise(by_attempt):  # dicts keep log order
        start = next((e for e in by_attempt[current] if e["event"] == "start"), None)
        steps = [e for e in by_attempt[current] if e["event"] == "step"]
        resumed = next((e for e in by_attempt[following] if e["event"] == "start"), None)
        if start is None or not steps or resumed is None:
            continue
        done_at = {e["step"]: e["t"] for e in steps}
        kept_until = done_at.get(resumed["step"], start["t"])
        found.append(
            Interruption(
                ended_wall=steps[-1].get("wall", 0.0),
                resumed_wall=resumed.get("wall", 0.0),
                lost_s=max(steps[-1]["t"] - kept_until, 0.0),
            )
        )
    return found


def lost_work_s(log: list[dict[str, Any]]) -> list[float]:
    return [item.lost_s for item in interruptions(log)]


def longest_save_s(log: list[dict[str, Any]]) -> float:
    """The longest time from a step to the end of the save made right after it."""
    step_at = {(e["attempt"], e["step"]): e["t"] for e in log if e["event"] == "step"}
    saves = [e for e in log if e["event"] == "save"]
    return max((e["t"] - step_at[(e["attempt"], e["step"])] for e in saves), default=0.0)
