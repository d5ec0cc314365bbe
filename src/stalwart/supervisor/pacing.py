"""Pacing: the advised checkpoint interval, kept up to date from what is measured.

Glue between the pure interval model (`interval.py`) and its memory (the
journal): the model is rebuilt from the job's history at start, fed each save
report, restart and attempt end, and every decision that changes the advice is
journaled with its inputs and reason.
"""

from __future__ import annotations

import logging
import math

from stalwart.clock import Clock
from stalwart.journal import CheckpointRecord, IntervalRecord, Journal
from stalwart.policy.estimators import ExposureRecord, SaveSample
from stalwart.policy.interval import IntervalConfig, IntervalDecision, IntervalModel
from stalwart.types import ExitKind

logger = logging.getLogger(__name__)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class Pacer:
    def __init__(
        self, config: IntervalConfig, journal: Journal, name: str, run_id: str, clock: Clock
    ) -> None:
        self._journal = journal
        self._run_id = run_id
        self._clock = clock
        attempts = journal.job_attempts(name)
        decisions = journal.interval_decisions(name)
        self.model = IntervalModel.from_history(
            config,
            saves=[SaveSample(c.stall_s, c.persist_s) for c in journal.checkpoints(name)],
            restarts_s=[a.ready_s for a in attempts if a.ready_s is not None],
            exposures=[
                ExposureRecord(a.uptime_s or 0.0, (ExitKind(a.kind),) if a.kind else ())
                for a in attempts
            ],
            previous_interval_s=decisions[-1].interval_s if decisions else None,
        )
        self.decision = self.model.decide()
        if decisions:
            logger.info(
                "%s: checkpoint interval %.0f s from %d past attempts and %d saves (%s)",
                name,
                self.decision.interval_s,
                len(attempts),
                len(journal.checkpoints(name)),
                self.decision.reason,
            )
        self._record(self.decision, force=not decisions)

    @property
    def interval_s(self) -> float:
        return self.decision.interval_s

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
        """A save was reported (trainer) or observed (directory watcher)."""
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
            self.model.observe_save(stall_s=stall_s, persist_s=persist_s)
        return self.recompute(running_exposure_s)

    def on_remote_persist(self, persist_s: float) -> IntervalDecision:
        """A save became durable in the remote copy: that too is persist time (the floor)."""
        self.model.observe_save(stall_s=None, persist_s=persist_s)
        return self.recompute(0.0)

    def on_restart(self, ready_s: float) -> IntervalDecision:
        """Relaunch + restore time of an attempt (launch to its first step)."""
        self.model.observe_restart(ready_s)
        return self.recompute(ready_s)

    def on_attempt_end(self, uptime_s: float, kind: ExitKind) -> IntervalDecision:
        self.model.observe_run(uptime_s, (kind,))
        return self.recompute(0.0)

    def recompute(self, running_exposure_s: float) -> IntervalDecision:
        decision = self.model.decide(running_exposure_s)
        self._record(decision)
        return decision
