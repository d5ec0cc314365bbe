"""The end of an attempt: reaping, classifying, the restart decision, the journal, the exit.

The core says when an attempt ended and what follows; this mixin gathers what the
classification needs (exit status, output tail, memory evidence), asks the restart
policy and the crash-loop rule when the core wants a decision (`Decide`), and records
the end (`Conclude`) and the job's (`Finish`).
"""

from __future__ import annotations

import signal

from stalwart.checkpoint import tiers
from stalwart.host import process
from stalwart.host.resources import memory_at_limit, oom_killed_since
from stalwart.host.trainer_process import Trainer
from stalwart.journal import RunStatus
from stalwart.policy import events as ev
from stalwart.policy.classify import ExitContext, classify
from stalwart.policy.restart import Action
from stalwart.supervisor.divergence import DivergenceMixin
from stalwart.supervisor.state import LOOP_TICK_S, Timer, logger
from stalwart.types import ExitCode, ExitStatus


class EndingMixin(DivergenceMixin):
    """Reaps the trainer and carries out the end of attempts and of the job."""

    def _reap(self) -> None:
        """Reap on SIGCHLD, and once a tick in case a signal was coalesced away."""
        now_s = self.clock.monotonic()
        tick = self.timers.get(Timer.REAP)
        if not self._child_exited and tick is not None and now_s < tick:
            return
        self._child_exited = False
        self.timers.set(Timer.REAP, now_s + LOOP_TICK_S)
        attempt = self.attempt
        known = {attempt.pid: attempt.popen} if attempt else {}
        exited = process.reap_exited(known)
        if attempt is not None and attempt.pid in exited:
            self._on_trainer_exit(attempt)

    def _on_trainer_exit(self, attempt: Trainer) -> None:
        assert attempt.popen.returncode is not None
        assert self._sentinel is not None
        uptime_s = attempt.uptime_s()
        # Everything it sent before dying is queued on the socket: it belongs to this attempt.
        self._read_notify()
        # The leader is gone; whatever it left in its group or orphaned to us goes too.
        process.signal_group(attempt.pid, signal.SIGKILL)
        process.kill_orphans({self._sentinel.pid})
        attempt.finish_output()
        self._sentinel.forget(attempt.pid)
        for pgid in attempt.watched_groups:
            self._sentinel.forget(pgid)
        self.attempt = None
        status = ExitStatus.from_returncode(attempt.popen.returncode)
        context = ExitContext(
            attempt=attempt.number,
            uptime_s=uptime_s,
            stop_requested=self.core.stop_requested,
            hang_killed=attempt.hang_killed,
            diverged=attempt.diverged,
            preemption_pending=self.core.notice is not None,
            done_reported=attempt.done_reported,
            peer_drained=attempt.peer_drained,
            memory_at_limit=memory_at_limit(
                attempt.last_sample, self.config.monitor.memory_limit_fraction
            )
            or oom_killed_since(attempt.first_sample, self._sampler.sample(None)),
        )
        verdict = classify(
            status,
            list(attempt.tail),
            context,
            rules=self.rules,
            non_retryable_exit_codes=frozenset(self.config.classify.non_retryable_exit_codes),
        )
        journal, run = self.journal, self.run_record
        assert journal is not None
        assert run is not None
        last_step, peak_rss = attempt.hang.last_step, attempt.peak_rss_bytes or None
        self._defer(
            lambda: journal.set_attempt_progress(
                run.run_id, attempt.number, last_step=last_step, peak_rss_bytes=peak_rss
            )
        )
        self._ended_attempt, self._ended_status = attempt, status
        self.feed(
            ev.TrainerExited(
                attempt.number, status.describe(), verdict, uptime_s, self.clock.monotonic()
            )
        )

    def _decide(self, ask: ev.Decide) -> ev.Decided:
        """The restart policy's decision, and the crash-loop rule's on top of it."""
        decision = self.policy.on_exit(
            self.clock.monotonic(), ask.verdict, ask.uptime_s, spend_budget=ask.spend_budget
        )
        attempt = self._ended_attempt
        if decision.action is not Action.FINISH and attempt is not None:
            decision = self._poison_rule(attempt, self._ended_status, ask.verdict, decision)
            decision = self._divergence_rule(attempt, ask.verdict, decision)
        return ev.Decided(ask.number, decision, self.clock.monotonic())

    def _conclude(self, end: ev.Conclude) -> None:
        assert self.journal is not None
        assert self.run_record is not None
        ended = self._ended_attempt
        status = self._ended_status if ended is not None and ended.number == end.number else None
        self._ended_attempt, self._ended_status = None, None
        if self.pacer is not None:
            self.advice.set_interval(
                self.pacer.on_attempt_end(end.uptime_s, end.verdict.kind).interval_s
            )
        wrote_memory = end.number in self.memory_saved_attempts
        self.tier_evidence = (
            end.verdict.kind if wrote_memory and end.verdict.kind.is_failure else None
        )
        journal, run_id, now_unix = self.journal, self.run_record.run_id, self.clock.wall()
        self._defer(
            lambda: journal.end_attempt(
                run_id,
                end.number,
                now_unix=now_unix,
                status=status,
                verdict=end.verdict,
                uptime_s=end.uptime_s,
                decision=f"{end.decision.action.value}: {end.decision.reason}",
            )
        )
        logger.info(
            "%s: attempt %d ended after %.1f s: %s -> %s (%s)",
            self.config.name,
            end.number,
            end.uptime_s,
            status.describe() if status else end.status,
            end.verdict.kind.value,
            "retryable" if end.verdict.retryable else "not retryable",
        )
        if end.decision.action is Action.RESTART:
            logger.info(
                "%s: relaunching in %.2f s (%s)",
                self.config.name,
                end.decision.delay_s,
                end.decision.reason,
            )

    def _finish(self, finish: ev.Finish) -> None:
        assert self.journal is not None
        assert self.run_record is not None
        self._flush_deferred()
        self.exit_code = finish.code
        self.final_message = finish.message
        memory = self.memory_dir
        if memory is not None:
            # Completed, gave up, or stopped after a durable save: the memory tier holds
            # nothing a later run needs. A stop without one keeps it (it is newer than the
            # disk), and so does a supervisor that crashed.
            if finish.completed or finish.gave_up or tiers.covered_by_disk(memory, self.ckpt_dir):
                tiers.remove_memory_dir(memory)
            else:
                logger.warning(
                    "%s: keeping the memory tier %s: it holds a newer checkpoint than %s",
                    self.config.name,
                    memory,
                    self.ckpt_dir,
                )
        if finish.completed:
            self.journal.end_run(self.run_record.run_id, RunStatus.COMPLETED, self.clock.wall())
        elif finish.gave_up:
            self.journal.end_run(self.run_record.run_id, RunStatus.GAVE_UP, self.clock.wall())
        elif finish.code is ExitCode.PREEMPTED:
            self.final_message = self._finish_preempted(finish.preempted_after)

    def _log_hang(self, attempt: Trainer, now_s: float) -> None:
        silence = attempt.hang.silence_s(now_s) or 0.0
        stats = attempt.hang.stats(now_s)
        rank = attempt.hang.slowest_rank(now_s)
        who = f" from rank {rank} (of {stats.ranks} ranks)" if rank is not None else ""
        logger.error(
            "%s: trainer pid %d is hung: no heartbeat%s for %.1f s (threshold %.1f s; last step "
            "%s, %d heartbeats); collecting stacks, then killing it",
            self.config.name,
            attempt.pid,
            who,
            silence,
            attempt.hang.threshold_s(now_s) or 0.0,
            stats.last_step,
            stats.heartbeats,
        )
