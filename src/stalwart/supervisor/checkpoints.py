"""Checkpoints seen from the loop: retention, observed writes, crash-loop rollback."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from stalwart import paths
from stalwart.checkpoint import FormatStatus, QuarantineReason, WriteKind, WriteObserved
from stalwart.host.scheduler import Pool
from stalwart.host.trainer_process import Trainer
from stalwart.policy.restart import (
    Action,
    Decision,
)
from stalwart.supervisor.keeper import RetentionDone
from stalwart.supervisor.state import (
    CHAOS_REASON,
    SupervisorState,
    logger,
)
from stalwart.types import Classification, ExitKind, ExitStatus

SELF_INFLICTED_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
)
"""Signals a process brings on itself (a crash), unlike SIGKILL or SIGTERM from outside."""


def poison_evidence(status: ExitStatus | None, kind: ExitKind) -> bool:
    """Does this end say anything about the checkpoint the attempt resumed from?

    A trainer that exits with an error, crashes on a signal of its own, hangs, or says
    its checkpoint is unreadable does; one killed from outside (the OOM killer, an
    operator, a preemption without notice) does not.
    """
    if kind in (ExitKind.HANG, ExitKind.CHECKPOINT_CORRUPT):
        return True
    if status is None:
        return False
    if status.signal is not None:
        return status.signal in SELF_INFLICTED_SIGNALS
    return status.code not in (None, 0) and status.effective_signal is None


class CheckpointMixin(SupervisorState):
    """Retention, observed writes and the crash-loop rule, as the loop sees them."""

    def _replay_poison_history(self) -> None:
        """After a supervisor restart: the crash-loop streak continues where it was."""
        assert self.journal is not None
        assert self.run_record is not None
        run_id = self.run_record.run_id
        produced = {
            c.attempt for c in self.journal.checkpoints(self.config.name) if c.run_id == run_id
        }
        for past in self.journal.attempts(run_id):
            if past.kind is None or (past.reason or "").startswith(CHAOS_REASON):
                continue
            resumed = Path(past.resume_from).name if past.resume_from else None
            status = ExitStatus(past.exit_code, past.signal) if past.ended_unix else None
            self.poison.on_attempt_end(
                resumed,
                past.attempt in produced,
                ExitKind(past.kind),
                evidence=poison_evidence(status, ExitKind(past.kind)),
            )
        self._replay_divergence_history()

    def _poison_rule(
        self,
        attempt: Trainer,
        status: ExitStatus | None,
        verdict: Classification,
        decision: Decision,
    ) -> Decision:
        """Crash-loop rollback: quarantine a checkpoint that every resume dies on."""
        if attempt.chaos_killed:
            return decision  # an injected kill says nothing about the checkpoint
        resumed = Path(attempt.resume_from).name if attempt.resume_from else None
        poison = self.poison.on_attempt_end(
            resumed,
            attempt.produced_checkpoint,
            verdict.kind,
            evidence=poison_evidence(status, verdict.kind),
        )
        if poison.give_up is not None:
            return Decision(Action.GIVE_UP, 0.0, poison.give_up)
        if poison.rollback is None or self.keeper is None:
            return decision
        moved = self.keeper.quarantine(
            poison.rollback,
            QuarantineReason.POISON,
            f"{self.config.restart.poison_after_failures} failures in a row after resuming "
            f"from it, no newer checkpoint; last: {verdict.reason}",
        )
        logger.error(
            "%s: checkpoint %s is poison: every attempt resuming from it failed; "
            "quarantined %s, rolling back to the previous intact checkpoint",
            self.config.name,
            poison.rollback,
            f"as {moved}" if moved is not None else "in memory only (it could not be moved)",
        )
        return dataclasses.replace(
            decision,
            reason=f"rolled back from poison checkpoint {poison.rollback}; {decision.reason}",
        )

    def _after_save(self, size_bytes: int | None) -> None:
        """A new checkpoint exists: prune old ones in the background, one pass at a time.

        Only the primary node prunes: every node's supervisor sees the same shared
        directory, and two pruning it at once would fight over the same entries.
        """
        keeper = self.keeper
        if keeper is None or not self.role.primary:
            return
        if self._retention_running:
            self._retention_again = True
            return
        self._retention_running = True
        self._retention_again = False
        journal_path = self.state_dir / paths.JOURNAL_NAME
        # A checkpoint still being uploaded is pinned: pruning it would fail its upload.
        busy = self._mirror.busy_names() if self._mirror is not None else frozenset()
        self._scheduler.submit(
            "retention", lambda: keeper.retain(journal_path, size_bytes, busy), pool=Pool.HEAVY
        )

    def _on_observed_write(self, event: WriteObserved) -> None:
        """A checkpoint write seen by the directory watcher (foreign, or ours unreported)."""
        attempt = self.attempt
        keeper = self.keeper
        if attempt is None or keeper is None or self.pacer is None:
            return
        foreign = event.kind is WriteKind.FOREIGN
        valid = event.format is not None and event.format.status is FormatStatus.VALID
        logger.info(
            "%s: observed %s checkpoint %s: %d bytes written in %.2f s%s",
            self.config.name,
            event.kind.value,
            event.name,
            event.size_bytes,
            event.duration_s,
            f" ({event.format.reason})" if event.format is not None else "",
        )
        if not attempt.reported_saves and (valid or not foreign):
            # A trainer that does not report its saves: the write time is its cost.
            decision = self.pacer.on_save(
                attempt=attempt.number,
                step=None,
                path=str(event.path),
                size_bytes=event.size_bytes,
                stall_s=event.duration_s,
                persist_s=event.duration_s,
                source="observed",
                running_exposure_s=attempt.uptime_s(),
            )
            self.advice.set_interval(decision.interval_s)
        if (valid or not foreign) and event.first_event_s >= attempt.started_s:
            attempt.produced_checkpoint = True  # written by this attempt, not a previous one
        if foreign and valid and self.config.checkpoint.adopt_foreign and self.role.primary:
            run_id, number = self.run_record.run_id if self.run_record else "", attempt.number
            self._scheduler.submit(
                f"adopt:{event.name}", lambda: keeper.adopt(event, run_id, number), pool=Pool.HEAVY
            )
        self._after_save(event.size_bytes)
        if not foreign:
            self._upload(str(event.path))

    def _on_retention(self, done: RetentionDone) -> None:
        self._retention_running = False
        if self._retention_again:
            self._after_save(None)
        for path in done.deleted:
            logger.info("%s: pruned checkpoint %s", self.config.name, path.name)
        if done.plan is not None and done.plan.short_bytes > 0:
            logger.warning(
                "%s: %d more bytes are needed in %s and nothing more can be pruned; "
                "the next save may fail (free space or lower checkpoint.keep_last)",
                self.config.name,
                done.plan.short_bytes,
                self.ckpt_dir,
            )
