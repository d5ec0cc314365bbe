"""One registry of deadlines by purpose: the earliest is what the loop waits for."""

from __future__ import annotations

import enum
from typing import Generic, TypeVar


class Due(enum.Enum):
    """What a deadline is for: one registry holds them all."""

    RELAUNCH = "relaunch"
    RUNNING = "running"
    CHAOS = "chaos"
    PEER_EXIT = "peer exit"
    ESCALATE = "escalate"
    KILL = "kill"
    ABANDON = "abandon"


K = TypeVar("K", bound=enum.Enum)


class Deadlines(Generic[K]):
    """Deadlines by purpose (an enum); the earliest is what the loop waits for. The core's
    own use `Due`; the shell keeps its timers (sampling, watchdog, ...) in another one."""

    def __init__(self) -> None:
        self._at: dict[K, float] = {}

    def set(self, what: K, at_s: float) -> None:
        self._at[what] = at_s

    def clear(self, *what: K) -> None:
        for w in what:
            self._at.pop(w, None)

    def get(self, what: K) -> float | None:
        return self._at.get(what)

    def next_s(self) -> float | None:
        return min(self._at.values(), default=None)

    def pop_due(self, now_s: float) -> list[K]:
        """The deadlines that have passed, earliest first; they are removed."""
        due = sorted((at, str(w.value), w) for w, at in self._at.items() if at <= now_s)
        for _, _, what in due:
            del self._at[what]
        return [what for _, _, what in due]
