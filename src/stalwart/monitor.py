"""Heartbeat tracking and hang detection. Pure: every call takes `now_s`.

A hang is a trainer that was heartbeating and stopped. The threshold is learned:
max(factor x the slow tail of observed heartbeat gaps, a floor), with a longer
allowance before the first few steps (start, restore, compilation) and while a
checkpoint is being written. A trainer that never heartbeats is never called hung.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stalwart.config import HangConfig

RECOMPUTE_EVERY_S = 1.0
"""The slow tail is re-sorted at most this often; heartbeats may come at 100 Hz."""


@dataclass(frozen=True)
class StepStats:
    """What the heartbeats say about progress (for logs and status)."""

    last_step: int | None
    heartbeats: int
    gap_p50_s: float | None
    gap_tail_s: float | None
    steps_per_s: float | None


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted, non-empty list."""
    rank = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


class HangDetector:
    """Per attempt: feed heartbeats and checkpoint brackets; ask for the deadline."""

    def __init__(self, config: HangConfig) -> None:
        self._config = config
        self._gaps_s: deque[float] = deque(maxlen=config.window_heartbeats)
        self._last_beat_s: float | None = None
        self._first_beat_s: float | None = None
        self._first_step: int | None = None
        self._last_step: int | None = None
        self._beats = 0
        self._in_checkpoint = False
        self._tail_s: float | None = None
        self._p50_s: float | None = None
        self._tail_at_s = -math.inf

    @property
    def last_step(self) -> int | None:
        return self._last_step

    @property
    def armed(self) -> bool:
        """Only a trainer that has heartbeated can hang."""
        return self._config.enabled and self._last_beat_s is not None

    def heartbeat(self, now_s: float, step: int | None = None) -> None:
        if self._last_beat_s is not None:
            self._gaps_s.append(max(now_s - self._last_beat_s, 0.0))
        else:
            self._first_beat_s = now_s
        self._last_beat_s = now_s
        self._beats += 1
        if step is not None:
            if self._first_step is None:
                self._first_step = step
            self._last_step = step

    def checkpoint_begin(self, now_s: float) -> None:
        self._in_checkpoint = True
        self.heartbeat(now_s)

    def checkpoint_end(self, now_s: float) -> None:
        # The save's duration is not a step time: restart the gap clock without a sample.
        self._in_checkpoint = False
        self._last_beat_s = now_s

    def _refresh_tail(self, now_s: float) -> None:
        if now_s - self._tail_at_s < RECOMPUTE_EVERY_S or not self._gaps_s:
            return
        ordered = sorted(self._gaps_s)
        self._tail_s = quantile(ordered, self._config.tail_quantile)
        self._p50_s = quantile(ordered, 0.5)
        self._tail_at_s = now_s

    def threshold_s(self, now_s: float) -> float | None:
        """How long silence may last now; None while not armed."""
        if not self.armed:
            return None
        cfg = self._config
        if len(self._gaps_s) < cfg.warmup_heartbeats:
            threshold = max(cfg.first_step_s, cfg.floor_s)
        else:
            self._refresh_tail(now_s)
            tail = self._tail_s if self._tail_s is not None else 0.0
            threshold = max(cfg.factor * tail, cfg.floor_s)
        if self._in_checkpoint:
            threshold = max(threshold, cfg.checkpoint_s)
        return threshold

    def deadline_s(self, now_s: float) -> float | None:
        threshold = self.threshold_s(now_s)
        if threshold is None or self._last_beat_s is None:
            return None
        return self._last_beat_s + threshold

    def is_hung(self, now_s: float) -> bool:
        deadline = self.deadline_s(now_s)
        return deadline is not None and now_s >= deadline

    def silence_s(self, now_s: float) -> float | None:
        return None if self._last_beat_s is None else now_s - self._last_beat_s

    def stats(self, now_s: float) -> StepStats:
        self._refresh_tail(now_s)
        rate = None
        if (
            self._first_step is not None
            and self._last_step is not None
            and self._first_beat_s is not None
            and self._last_beat_s is not None
            and self._last_beat_s > self._first_beat_s
        ):
            rate = (self._last_step - self._first_step) / (self._last_beat_s - self._first_beat_s)
        return StepStats(self._last_step, self._beats, self._p50_s, self._tail_s, rate)
