"""The supervisor's one observer hook: its events as plain records for notify and metrics.

The loop calls `LoopObserver` where it already acts (each core event and action in
`feed`, heartbeats and save reports, observed writes, teardown); this module reads what
the records need from the supervisor's state and hands them to the configured observers
(`stalwart.observation.Fanout`). With neither `notify` nor `metrics` configured every
hook returns at once, and nothing of apprise or prometheus_client is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from stalwart.checkpoint import FormatStatus, WriteKind, WriteObserved
from stalwart.checkpoint.layout import parse_step
from stalwart.observation import (
    AttemptEnded,
    AttemptStarted,
    CheckpointSaved,
    Fanout,
    IntervalAdvised,
    JobEnded,
    JobInfo,
    Observer,
    Preempted,
)
from stalwart.policy import events as ev
from stalwart.policy.interval import IntervalDecision
from stalwart.policy.restart import Action
from stalwart.types import ExitKind

if TYPE_CHECKING:
    from stalwart.supervisor.state import SupervisorState


class LoopObserver:
    """Built empty with the supervisor; `start()` (at setup) builds what the config asks."""

    def __init__(self, supervisor: SupervisorState) -> None:
        self._sup = supervisor
        self.sinks = Fanout()
        self._state: str | None = None
        self._decision: IntervalDecision | None = None
        self._last_save_s: dict[int, float] = {}
        self._rollbacks_seen = 0
        self._newest: str | None = None
        self._closed = False

    def start(self) -> None:
        """Build the notifier and the metrics; a bad URL or address is exit 2 (UsageError)."""
        sup, config = self._sup, self._sup.config
        built: list[Observer] = []
        try:
            counts = None
            if config.notify.urls:
                from stalwart.notify.config import NOTIFY_POINTER
                from stalwart.notify.observer import NotifyObserver
                from stalwart.notify.sender import Sender, build_targets, write_private

                sender = Sender(build_targets(config.notify, sup.environ), config.notify)
                built.append(NotifyObserver(config.notify, sender))
                counts = sender.snapshot
                section = config.notify.model_dump(mode="json")
                section["urls"] = [u.get_secret_value() for u in config.notify.urls]
                write_private(
                    sup.state_dir / NOTIFY_POINTER,
                    json.dumps({"name": config.name, "notify": section}, indent=2) + "\n",
                )
            if config.metrics.listen is not None or config.metrics.textfile is not None:
                from stalwart.metrics.exporter import Exporter, require_client

                require_client()
                from stalwart.metrics.registry import JobMetrics

                metrics = JobMetrics(config.name, monotonic=sup.clock.monotonic)
                if counts is not None:
                    metrics.add_notification_counts(counts)
                built.append(metrics)
                built.append(Exporter(config.metrics, metrics.registry, config.name))
        except BaseException:
            Fanout(built).close()
            raise
        self.sinks = Fanout(built)
        if not self.sinks:
            return
        assert sup.run_record is not None
        self.sinks.job_started(
            JobInfo(
                name=config.name,
                host=socket.gethostname(),
                run_id=sup.run_record.run_id,
                state_dir=sup.state_dir,
                ckpt_dir=sup.ckpt_dir,
                max_restarts=config.restart.max_restarts,
            )
        )
        self._sync()

    def _sync(self) -> None:
        """State and advised interval: cheap comparisons, told only when they change."""
        state = self._sup.machine.state.value
        if state != self._state:
            self._state = state
            self.sinks.state_changed(state)
        pacer = self._sup.pacer
        if pacer is not None and pacer.decision is not self._decision:
            d = self._decision = pacer.decision
            advised = IntervalAdvised(
                d.interval_s, d.ckpt_s, d.persist_s, d.restart_s, d.mtbf_s, d.reason
            )
            self.sinks.interval_advised(advised)

    def on_action(self, action: ev.ActionT) -> None:
        """Before the shell carries out an action (the ended attempt is still at hand)."""
        if self.sinks and isinstance(action, ev.Conclude):
            self._attempt_ended(action)

    def on_event(self, event: ev.Event) -> None:
        """After the core handled an event and its actions were carried out."""
        if not self.sinks:
            return
        sup = self._sup
        if isinstance(event, ev.Launched) and sup.attempt is not None:
            resume = sup.attempt.resume_from or ""
            written: float | None = None
            if resume:
                self._newest = resume
                with contextlib.suppress(OSError):
                    written = os.stat(resume).st_mtime
            self.sinks.attempt_started(
                AttemptStarted(
                    event.number,
                    resume,
                    parse_step(Path(resume).name) if resume else None,
                    written,
                    sup.clock.wall(),
                )
            )
        elif isinstance(event, ev.PreemptionNoticed):
            self.sinks.preempted(
                Preempted(event.label, event.detail, event.deadline_unix, event.now_unix)
            )
        self._sync()

    def _attempt_ended(self, end: ev.Conclude) -> None:
        sup = self._sup
        trainer = sup._ended_attempt
        trainer = trainer if trainer is not None and trainer.number == end.number else None
        rolled = sup.poison.rolled_back
        rolled_back = rolled[-1] if len(rolled) > self._rollbacks_seen else None
        self._rollbacks_seen = len(rolled)
        now_s = sup.clock.monotonic()
        lost_s = 0.0
        if trainer is not None and end.verdict.kind.is_failure:
            since = max(trainer.started_s, self._last_save_s.pop(end.number, trainer.started_s))
            lost_s = max(now_s - since, 0.0)
        self.sinks.attempt_ended(
            AttemptEnded(
                number=end.number,
                kind=end.verdict.kind,
                retryable=end.verdict.retryable,
                reason=end.verdict.reason,
                status=end.status,
                uptime_s=end.uptime_s,
                tail=tuple(trainer.tail) if trainer is not None else (),
                resumed_from=trainer.resume_from if trainer is not None else "",
                action=end.decision.action.value,
                decision=end.decision.reason,
                delay_s=end.decision.delay_s,
                hang_killed=trainer.hang_killed if trainer is not None else False,
                rolled_back=rolled_back,
                restart_budget_left=max(
                    sup.config.restart.max_restarts - sup.policy.failures_in_window, 0
                ),
                work_lost_s=lost_s,
                newest_checkpoint=self._newest,
                now_unix=sup.clock.wall(),
                diverged=trainer.diverged if trainer is not None else None,
                quarantined=sup.divergence_quarantined.pop(end.number, ()),
                skip_batches=sup.config.divergence.skip_batches
                if end.verdict.kind is ExitKind.DIVERGED and end.decision.action is Action.RESTART
                else 0,
            )
        )

    def heartbeat(self, step: int | None, now_s: float) -> None:
        if self.sinks:
            self.sinks.heartbeat(step, now_s)

    def saved(
        self,
        number: int,
        *,
        step: int | None,
        path: str | None,
        size_bytes: int | None,
        stall_s: float | None,
        persist_s: float | None,
        source: str = "trainer",
    ) -> None:
        if not self.sinks:
            return
        self._last_save_s[number] = self._sup.clock.monotonic()
        if path is not None and path.isdigit():
            path = None  # CKPT_DONE names the step when the trainer gave no path
        if path:
            self._newest = path
        now_unix = self._sup.clock.wall()
        self.sinks.checkpoint_saved(
            CheckpointSaved(step, path, size_bytes, stall_s, persist_s, source, now_unix)
        )
        self._sync()

    def observed(self, event: WriteObserved) -> None:
        """A write seen in the checkpoint dir: ours, or a foreign one that checks out."""
        attempt = self._sup.attempt
        if not self.sinks or attempt is None:
            return
        valid = event.format is not None and event.format.status is FormatStatus.VALID
        if event.kind is WriteKind.FOREIGN and not valid:
            return
        self._newest = str(event.path)  # a report need not name its path
        if attempt.reported_saves:
            self._sync()  # the trainer's own report told the rest already
            return
        self.saved(
            attempt.number,
            step=parse_step(event.name),
            path=str(event.path),
            size_bytes=event.size_bytes,
            stall_s=event.duration_s,
            persist_s=event.duration_s,
            source="observed",
        )

    def close(self) -> None:
        """At teardown: the job's end (from the exit code), then deliver and stop."""
        if self._closed or not self.sinks:
            return
        self._closed = True
        sup = self._sup
        with contextlib.suppress(Exception):
            self._sync()
        self.sinks.job_ended(
            JobEnded(sup.exit_code, sup.final_message, self._newest, sup.clock.wall())
        )
        self.sinks.close()
