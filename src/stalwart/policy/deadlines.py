"""One registry of deadlines by purpose: the earliest is what the loop waits for."""

from __future__ import annotations

import enum


class Due(enum.Enum):
    """What a deadline is for: one registry holds them all."""

    RELAUNCH = "relaunch"
    RUNNING = "running"
    CHAOS = "chaos"
    PEER_EXIT = "peer exit"
    ESCALATE = "escalate"
    KILL = "kill"
    ABANDON = "abandon"


class Deadlines:
    """Deadlines by purpose; the earliest is what the loop waits for."""

    def __init__(self) -> None:
        self._at: dict[Due, float] = {}

    def set(self, what: Due, at_s: float) -> None:
        self._at[what] = at_s

    def clear(self, *what: Due) -> None:
        for w in what:
            self._at.pop(w, None)

    def get(self, what: Due) -> float | None:
        return self._at.get(what)

    def next_s(self) -> float | None:
        return min(self._at.values(), default=None)

    def pop_due(self, now_s: float) -> list[Due]:
        """The deadlines that have passed, earliest first; they are removed."""
        due = sorted((at, w.value, w) for w, at in self._at.items() if at <= now_s)
        for _, _, what in due:
            del self._at[what]
        return [what for _, _, what in due]
