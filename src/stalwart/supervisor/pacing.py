"""Pacing: the advised checkpoint interval, kept up to date from what is measured.

Glue between the pure interval model (`interval.py`) and its memory (the
journal): the model is rebuilt from the job's history at start, fed each save
report, restart and attempt end, and every decision that changes the advice is
journaled with its inputs and reason.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from stalwart.checkpoint.tiers import tier_of
from stalwart.clock import Clock
from stalwart.journal import AttemptRecord, CheckpointRecord, IntervalRecord, Journal
from stalwart.policy.estimators import ExposureRecord, SaveSample
from stalwart.policy.interval import IntervalConfig, IntervalDecision, IntervalModel
from stalwart.policy.multilevel import TierFailureRecord, TierRateEstimator
from stalwart.types import ExitKind

MEMORY_SOURCE = "trainer-memory"
"""A save committed in the memory tier (its journal record's source)."""
logger = logging.getLogger(__name__)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _duration(value_s: float | None) -> float | None:
    """A measured duration the model can use: finite and >= 0, else None (ignored)."""
    return value_s if value_s is not None and math.isfinite(value_s) and value_s >= 0 else None


def relaunch_evidence(
    attempts: Sequence[AttemptRecord], saves: Sequence[CheckpointRecord], memory_root: Path | None
) -> list[TierFailureRecord]:
    """From the journal: for each failed attempt that had written to the memory tier and
    was followed by another attempt of its run, whether that one resumed from the tier."""
    if memory_root is None:
        return []
    wrote = {(c.run_id, c.attempt) for c in saves if c.source == MEMORY_SOURCE}
    found = []
    for before, after in itertools.pairwise(attempts):
        if (
            before.kind is None
            or not ExitKind(before.kind).is_failure
            or (before.run_id, before.attempt) not in wrote
            or (after.run_id, after.attempt) != (before.run_id, before.attempt + 1)
        ):
            continue
        intact = (
            bool(after.resume_from) and tier_of(after.resume_from or "", memory_root) == "memory"
        )
        found.append(TierFailureRecord(0.0, ExitKind(before.kind), memory_intact=intact))
    return found


class Pacer:
    def __init__(
        self,
        config: IntervalConfig,
        journal: Journal,
        name: str,
        run_id: str,
        clock: Clock,
        *,
        memory: IntervalConfig | None = None,
        memory_root: Path | None = None,
        on_memory_interval: Callable[[float | None], None] | None = None,
    ) -> None:
        """`memory`: the memory tier's interval config (None: no memory tier). With one,
        each failure counts toward the tier that recovers it: the memory tier's when its
        kind is learned to leave the tier intact (`TierRateEstimator`'s chance per kind,
        from what each relaunch found, >= 0.5), else the durable one's; each interval is
        Young/Daly on its own cost and rate (the first-order form of the multi-level
        model). `on_memory_interval` hears every memory-interval change."""
        self._journal = journal
        self._run_id = run_id
        self._clock = clock
        self._ignored_logged = False
        attempts = journal.job_attempts(name)
        decisions = journal.interval_decisions(name)
        saves = journal.checkpoints(name)
        self.tier_rates: TierRateEstimator | None = None
        if memory is not None:
            self.tier_rates = TierRateEstimator().observe_all(
                relaunch_evidence(attempts, saves, memory_root)
            )
        # History written before values were checked at the boundary may hold inf or < 0.
        self.memory_model: IntervalModel | None = None
        self._on_memory_interval = on_memory_interval
        self.memory_interval_s: float | None = None
        if memory is not None:
            self.memory_model = self._rebuilt(memory, saves, attempts, tier=0)
        self.model = self._rebuilt(
            config,
            saves,
            attempts,
            tier=1,
            previous_interval_s=decisions[-1].interval_s if decisions else None,
        )
        self.decision = self.model.decide()
        if decisions:
            logger.info(
                "%s: checkpoint interval %.0f s from %d past attempts and %d saves (%s)",
                name,
                self.decision.interval_s,
                len(attempts),
                len(saves),
                self.decision.reason,
            )
        self._record(self.decision, force=not decisions)
        self._memory_decide(0.0)

    def _rebuilt(
        self,
        config: IntervalConfig,
        saves: Sequence[CheckpointRecord],
        attempts: Sequence[AttemptRecord],
        *,
        tier: int,
        previous_interval_s: float | None = None,
    ) -> IntervalModel:
        """One tier's model as if it had seen the journal: its own saves, every restart and
        exposure, and the failures routed to it (`tier` 0: memory, 1: durable)."""
        in_memory = tier == 0
        return IntervalModel.from_history(
            config,
            saves=[
                SaveSample(_duration(c.stall_s), _duration(c.persist_s))
                for c in saves
                if (c.source == MEMORY_SOURCE) == in_memory
            ],
            restarts_s=[r for a in attempts if (r := _duration(a.ready_s)) is not None],
            exposures=[
                ExposureRecord(_duration(a.uptime_s) or 0.0, self._route(a.kind)[tier])
                for a in attempts
            ],
            previous_interval_s=previous_interval_s,
        )

    @property
    def interval_s(self) -> float:
        return self.decision.interval_s

    def _usable(self, what: str, value_s: float | None) -> float | None:
        """`value_s` if the model can learn from it; else None, logged the first time."""
        usable = _duration(value_s)
        if usable is None and value_s is not None and not self._ignored_logged:
            self._ignored_logged = True
            logger.warning(
                "ignoring %s = %r for the checkpoint interval (not a finite duration >= 0; "
                "a clock step or a broken report); such values are ignored from now on",
                what,
                value_s,
            )
        return usable

    def _record(self, decision: IntervalDecision, *, force: bool = False) -> None:
        self.decision = decision
        if not (decision.changed or force):
            return
        self._journal.add_interval_decision(
            IntervalRecord(
                run_id=self._run_id,
                decided_unix=self._clock.wall(),
                interval_s=decision.interval_s,
                basis=decision.basis.value,
                reason=decision.reason,
                ckpt_s=decision.ckpt_s,
                persist_s=decision.persist_s,
                restart_s=decision.restart_s,
                mtbf_s=_finite(decision.mtbf_s),
                failures=decision.failures,
                optimum_s=_finite(decision.optimum_s),
                waste_fraction=_finite(decision.expected_waste_fraction),
            )
        )

    def on_save(
        self,
        *,
        attempt: int | None,
        step: int | None,
        path: str | None,
        size_bytes: int | None,
        stall_s: float | None,
        persist_s: float | None,
        source: str,
        running_exposure_s: float,
    ) -> IntervalDecision:
        """A save was reported (trainer; `MEMORY_SOURCE`: to the memory tier) or observed
        (directory watcher)."""
        stall_s = self._usable("a save's stall time", stall_s)
        persist_s = self._usable("a save's persist time", persist_s)
        self._journal.add_checkpoint(
            CheckpointRecord(
                run_id=self._run_id,
                attempt=attempt,
                step=step,
                path=path,
                size_bytes=size_bytes,
                stall_s=stall_s,
                persist_s=persist_s,
                reported_unix=self._clock.wall(),
                source=source,
            )
        )
        if stall_s is not None or persist_s is not None:
            model = self.memory_model if source == MEMORY_SOURCE else self.model
            if model is not None:
                model.observe_save(stall_s=stall_s, persist_s=persist_s)
        return self.recompute(running_exposure_s)

    def on_remote_persist(self, persist_s: float) -> IntervalDecision:
        """A save became durable in the remote copy: that too is persist time (the floor)."""
        usable = self._usable("a remote persist time", persist_s)
        if usable is not None:
            self.model.observe_save(stall_s=None, persist_s=usable)
        return self.recompute(0.0)

    def on_restart(self, ready_s: float) -> IntervalDecision:
        """Relaunch + restore time of an attempt (launch to its first step)."""
        usable = self._usable("a restart time", ready_s)
        if usable is not None:
            self.model.observe_restart(usable)
            if self.memory_model is not None:
                self.memory_model.observe_restart(usable)
        return self.recompute(usable or 0.0)

    def on_attempt_end(self, uptime_s: float, kind: ExitKind) -> IntervalDecision:
        uptime = self._usable("an attempt's uptime", uptime_s) or 0.0
        in_memory, durable = self._route(kind.value)
        self.model.observe_run(uptime, durable)
        if self.memory_model is not None:
            self.memory_model.observe_run(uptime, in_memory)
        return self.recompute(0.0)

    def on_relaunch(self, kind: ExitKind, memory_intact: bool) -> None:
        """What the resume after a failure of `kind` found of the memory tier (which the
        failed attempt had written to): the evidence its kind is routed by from now on."""
        if self.tier_rates is not None:
            self.tier_rates.observe(TierFailureRecord(0.0, kind, memory_intact=memory_intact))
            logger.info(
                "memory tier %s after %s; chance it survives %s: %.2f",
                "intact" if memory_intact else "gone",
                kind.value,
                kind.value,
                self.tier_rates.memory_intact_chance(kind),
            )

    def _route(self, kind: str | None) -> tuple[tuple[ExitKind, ...], tuple[ExitKind, ...]]:
        """(kinds for the memory model, kinds for the durable model) of one attempt's end:
        without a memory tier, everything counts toward the durable one."""
        if kind is None:
            return (), ()
        exit_kind = ExitKind(kind)
        if self.tier_rates is None:
            return (), (exit_kind,)
        if self.tier_rates.memory_intact_chance(exit_kind) >= 0.5:
            return (exit_kind,), ()
        return (), (exit_kind,)

    def recompute(self, running_exposure_s: float) -> IntervalDecision:
        running = self._usable("a running exposure", running_exposure_s) or 0.0
        decision = self.model.decide(running)
        self._record(decision)
        self._memory_decide(running)
        return decision

    def _memory_decide(self, running_exposure_s: float) -> None:
        """The memory tier's interval, never longer than the durable one."""
        if self.memory_model is None:
            return
        decision = self.memory_model.decide(running_exposure_s)
        interval_s = min(decision.interval_s, self.decision.interval_s)
        if interval_s != self.memory_interval_s:
            if decision.changed or self.memory_interval_s is None:
                logger.info("memory-tier interval %.2f s (%s)", interval_s, decision.reason)
            self.memory_interval_s = interval_s
            if self._on_memory_interval is not None:
                self._on_memory_interval(interval_s)
