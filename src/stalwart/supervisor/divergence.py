"""Loss spikes and NaN as the loop sees them: watch the reports, stop, roll back, skip ahead.

The decisions are `policy.divergence`'s (when the loss diverged, how many rollbacks a run
may take); this mixin feeds it the trainer's `LOSS=` reports, asks the core to kill the
trainer at once (no stop signal: a trainer that drains saves the damaged state), and after
the end quarantines every checkpoint written after the spike began (reason `diverged`, in
both tiers), so the next attempt resumes from the newest intact one before it and skips
`divergence.skip_batches` batches past that checkpoint's data position
($STALWART_DATA_SKIP and the advice file's `skip_batches`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stalwart.checkpoint import QuarantineReason
from stalwart.checkpoint.layout import foreign_step, parse_step
from stalwart.host.trainer_process import Trainer
from stalwart.policy import events as ev
from stalwart.policy.divergence import Divergence
from stalwart.policy.restart import Action, Decision
from stalwart.supervisor.state import SupervisorState, logger
from stalwart.types import Classification, ExitKind


def checkpoint_step(path: str) -> int | None:
    """The step a resume point holds (None: a fresh start, or a name without one)."""
    if not path:
        return None
    name = Path(path).name
    step = parse_step(name)
    return step if step is not None else foreign_step(name)


class DivergenceMixin(SupervisorState):
    """Feeds the loss monitor, and carries out a divergence rollback."""

    def _on_loss(self, attempt: Trainer, step: int | None, loss: float, now_s: float) -> None:
        if attempt.diverged is not None or attempt.killed or self.core.draining:
            return
        at = step if step is not None else attempt.hang.last_step
        found = self.losses.observe(at if at is not None else 0, loss)
        if found is None:
            return
        attempt.diverged = found.describe()
        self.divergences[attempt.number] = found
        logger.error(
            "%s: the loss diverged: %s (last healthy report: step %s); killing the trainer "
            "without letting it save",
            self.config.name,
            attempt.diverged,
            found.began_after_step,
        )
        self.feed(ev.DivergenceDetected(now_s))

    def data_skip_for(self, resume_from: str) -> int:
        """Batches the attempt resuming from `resume_from` skips: one `skip_batches` per
        rollback whose spike began after that checkpoint."""
        step = checkpoint_step(resume_from)
        at = step if step is not None else -1  # a fresh start is before every spike
        return sum(batches for after, batches in self.data_skips if at <= after)

    def _divergence_rule(
        self, attempt: Trainer, verdict: Classification, decision: Decision
    ) -> Decision:
        """After a divergence: give up when the rollbacks are spent, else quarantine what was
        written after the spike began and skip ahead at the next resume."""
        found = self.divergences.pop(attempt.number, None)
        if verdict.kind is not ExitKind.DIVERGED or found is None:
            return decision
        rule = self.divergence_rollbacks.on_divergence(found.describe())
        if rule.give_up is not None:
            return Decision(Action.GIVE_UP, 0.0, rule.give_up)
        if decision.action is not Action.RESTART:
            return decision
        boundary = self._last_good_step(attempt, found)
        names = self.keeper.names_after(boundary) if self.keeper is not None else []
        for name in names:
            assert self.keeper is not None
            self.keeper.quarantine(
                name,
                QuarantineReason.DIVERGED,
                f"written after the loss began to diverge ({found.describe()}); "
                f"last healthy step {boundary}",
            )
        skip = self.config.divergence.skip_batches
        self.data_skips.append((boundary, skip))
        self.divergence_quarantined[attempt.number] = tuple(names)
        limit = self.config.divergence.max_rollbacks
        logger.error(
            "%s: divergence rollback %d of %d: quarantined %s as diverged; the next attempt "
            "resumes from the newest intact checkpoint up to step %d and skips %d batches",
            self.config.name,
            len(self.divergence_rollbacks.spikes),
            limit,
            ", ".join(names) if names else "nothing (no checkpoint after the spike)",
            boundary,
            skip,
        )
        return dataclasses.replace(
            decision,
            reason=f"divergence rollback {len(self.divergence_rollbacks.spikes)} of {limit} "
            f"({found.describe()}): {len(names)} checkpoint(s) quarantined as diverged, "
            f"skipping {skip} batches; {decision.reason}",
        )

    def _last_good_step(self, attempt: Trainer, found: Divergence) -> int:
        """Checkpoints after this step may hold the damage. With no healthy report in the
        attempt, its resume checkpoint is suspect too."""
        if found.began_after_step is not None:
            return found.began_after_step
        resumed = checkpoint_step(attempt.resume_from)
        return resumed - 1 if resumed is not None else -1

    def _replay_divergence_history(self) -> None:
        """After a supervisor restart: the run's divergences still count against the bound
        (the data skips they asked for are not replayed: a resume before a spike may meet it
        again, which is one more rollback)."""
        assert self.journal is not None
        assert self.run_record is not None
        for past in self.journal.attempts(self.run_record.run_id):
            if past.kind == ExitKind.DIVERGED.value:
                self.divergence_rollbacks.spikes.append(past.reason or "a divergence")
