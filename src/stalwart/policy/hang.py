"""Heartbeat tracking and hang detection. Pure: every call takes `now_s`.

A hang is a trainer that was heartbeating and stopped; with several ranks (torchrun
workers), any rank that was heartbeating and stopped. The threshold is learned:
max(factor x the slow tail of observed heartbeat gaps, a floor), with a longer
allowance before the first few steps (start, restore, compilation) and while a
checkpoint is being written. A trainer that never heartbeats is never called hung.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pydantic import Field

from stalwart.policy.section import NonNegativeS, PositiveS, Section

RECOMPUTE_EVERY_S = 1.0
"""The slow tail is re-sorted at most this often; heartbeats may come at 100 Hz."""


class HangConfig(Section):
    """When a trainer that heartbeats is called hung (it is then killed and relaunched)."""

    enabled: bool = True
    """Off: heartbeats are tracked for status but never lead to a kill."""
    factor: float = Field(default=10.0, ge=1.0)
    """Silence allowed, as a multiple of the slow tail of observed heartbeat gaps."""
    tail_quantile: float = Field(default=0.99, gt=0, le=1)
    """Which quantile of the heartbeat gaps is the slow tail."""
    floor_s: PositiveS = 120.0
    """Never call a hang sooner than this."""
    first_step_s: PositiveS = 1800.0
    """Allowance until `warmup_heartbeats` gaps are seen (start, restore, compilation)."""
    warmup_heartbeats: int = Field(default=5, ge=1)
    """Heartbeat gaps observed before the learned threshold applies."""
    checkpoint_s: PositiveS = 3600.0
    """Allowance while a checkpoint is being written (CKPT_BEGIN without a report)."""
    window_heartbeats: int = Field(default=2000, ge=10)
    """Recent heartbeat gaps kept to learn the slow tail."""
    dump_wait_s: NonNegativeS = 3.0
    """Time given to dump Python stacks (SIGUSR2 / py-spy) before the kill."""


@dataclass(frozen=True)
class StepStats:
    """What the heartbeats say about progress (for logs and status)."""

    last_step: int | None
    heartbeats: int
    gap_p50_s: float | None
    gap_tail_s: float | None
    steps_per_s: float | None
    ranks: int = 1
    """Ranks heartbeating (torchrun workers; 1 for a single-process trainer)."""


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted, non-empty list."""
    rank = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


class _Rank:
    """What the heartbeats of one rank say (a plain record, updated in place: 100 Hz)."""

    __slots__ = ("first_beat_s", "first_step", "gaps", "last_beat_s", "last_step")

    def __init__(self, now_s: float) -> None:
        self.first_beat_s = now_s
        self.last_beat_s = now_s
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.gaps = 0


class HangDetector:
    """Per attempt: feed heartbeats and checkpoint brackets; ask for the deadline.

    Heartbeats are tracked per rank (the notify key RANK; torchrun's workers each send
    theirs). A datagram without RANK is one implicit rank, so a single-process trainer is
    one rank. The slowest rank decides: the deadline is the earliest of each rank's last
    heartbeat plus its threshold, so any rank that heartbeated and fell silent is a hang,
    and the step reported is the lowest any rank reached. Gaps of all ranks are pooled to
    learn the slow tail; the first-step allowance lasts per rank until that rank has shown
    `warmup_heartbeats` gaps.
    """

    def __init__(self, config: HangConfig) -> None:
        self._config = config
        self._gaps_s: deque[float] = deque(maxlen=config.window_heartbeats)
        self._ranks: dict[int | None, _Rank] = {}
        self._beats = 0
        self._in_checkpoint = False
        self._tail_s: float | None = None
        self._p50_s: float | None = None
        self._tail_at_s = -math.inf

    @property
    def last_step(self) -> int | None:
        """The slowest rank's last step (the step every rank has reached)."""
        steps = [r.last_step for r in self._ranks.values() if r.last_step is not None]
        return min(steps) if steps else None

    @property
    def ranks(self) -> int:
        """Ranks being watched."""
        return len(self._ranks)

    def has_rank(self, rank: int | None) -> bool:
        return rank in self._ranks

    @property
    def armed(self) -> bool:
        """Only a trainer that has heartbeated can hang."""
        return self._config.enabled and bool(self._ranks)

    def heartbeat(self, now_s: float, step: int | None = None, rank: int | None = None) -> None:
        record = self._ranks.get(rank)
        if record is None:
            record = self._ranks[rank] = _Rank(now_s)
        else:
            self._gaps_s.append(max(now_s - record.last_beat_s, 0.0))
            record.gaps += 1
            record.last_beat_s = now_s
        self._beats += 1
        if step is not None:
            if record.first_step is None:
                record.first_step = step
            record.last_step = step

    def rank_started(self, now_s: float, rank: int) -> None:
        """READY from a rank: a worker (re)started. One seen before was restarted in place by
        torchrun (a membership change, or `launcher.max_restarts`): its first-step allowance
        begins again, as for a new rank."""
        if rank in self._ranks:
            self._ranks[rank] = _Rank(now_s)
            self._beats += 1
        else:
            self.heartbeat(now_s, rank=rank)

    def checkpoint_begin(self, now_s: float, rank: int | None = None) -> None:
        """Any rank's CKPT_BEGIN starts the checkpoint allowance for all."""
        self._in_checkpoint = True
        self.heartbeat(now_s, rank=rank)

    def checkpoint_end(self, now_s: float, rank: int | None = None) -> None:
        """A save report ends the allowance for all ranks (one rank reports for its node)."""
        # The save's duration is not a step time: restart every gap clock without a sample.
        self._in_checkpoint = False
        if not self._ranks:
            # A report is a sign of life too: it arms the watch, as a heartbeat would.
            self._ranks[rank] = _Rank(now_s)
        for record in self._ranks.values():
            record.last_beat_s = now_s

    def _refresh_tail(self, now_s: float) -> None:
        if now_s - self._tail_at_s < RECOMPUTE_EVERY_S or not self._gaps_s:
            return
        ordered = sorted(self._gaps_s)
        self._tail_s = quantile(ordered, self._config.tail_quantile)
        self._p50_s = quantile(ordered, 0.5)
        self._tail_at_s = now_s

    def _thresholds(self, now_s: float) -> tuple[float, float]:
        """(warming up, learned): silence allowed to a rank before and after its warmup."""
        cfg = self._config
        warming = max(cfg.first_step_s, cfg.floor_s)
        learned = warming
        if len(self._gaps_s) >= cfg.warmup_heartbeats:
            self._refresh_tail(now_s)
            tail = self._tail_s if self._tail_s is not None else 0.0
            learned = max(cfg.factor * tail, cfg.floor_s)
        if self._in_checkpoint:
            warming = max(warming, cfg.checkpoint_s)
            learned = max(learned, cfg.checkpoint_s)
        return warming, learned

    def _critical(self, now_s: float) -> tuple[int | None, _Rank, float] | None:
        """The rank whose silence runs out first: (rank, its record, its threshold)."""
        if not self.armed:
            return None
        warming, learned = self._thresholds(now_s)
        warmup = self._config.warmup_heartbeats
        best: tuple[int | None, _Rank, float] | None = None
        best_deadline = math.inf
        for rank, record in self._ranks.items():
            threshold = warming if record.gaps < warmup else learned
            deadline = record.last_beat_s + threshold
            if deadline < best_deadline:
                best, best_deadline = (rank, record, threshold), deadline
        return best

    def threshold_s(self, now_s: float) -> float | None:
        """How long silence may last now (for the slowest rank); None while not armed."""
        critical = self._critical(now_s)
        return None if critical is None else critical[2]

    def deadline_s(self, now_s: float) -> float | None:
        critical = self._critical(now_s)
        return None if critical is None else critical[1].last_beat_s + critical[2]

    def is_hung(self, now_s: float) -> bool:
        deadline = self.deadline_s(now_s)
        return deadline is not None and now_s >= deadline

    def slowest_rank(self, now_s: float) -> int | None:
        """The rank whose silence runs out first (None: the implicit rank, or not armed)."""
        critical = self._critical(now_s)
        return None if critical is None else critical[0]

    def silence_s(self, now_s: float) -> float | None:
        """How long the slowest rank has been silent."""
        critical = self._critical(now_s)
        if critical is None:
            oldest = min((r.last_beat_s for r in self._ranks.values()), default=None)
            return None if oldest is None else now_s - oldest
        return now_s - critical[1].last_beat_s

    def stats(self, now_s: float) -> StepStats:
        self._refresh_tail(now_s)
        rate = None
        slowest = min(
            (r for r in self._ranks.values() if r.last_step is not None),
            key=lambda r: r.last_step or 0,
            default=None,
        )
        if (
            slowest is not None
            and slowest.first_step is not None
            and slowest.last_step is not None
            and slowest.last_beat_s > slowest.first_beat_s
        ):
            rate = (slowest.last_step - slowest.first_step) / (
                slowest.last_beat_s - slowest.first_beat_s
            )
        return StepStats(
            slowest.last_step if slowest is not None else None,
            self._beats,
            self._p50_s,
            self._tail_s,
            rate,
            len(self._ranks),
        )
