"""Events from other threads, stop signals, and preemption notices: draining before a deadline."""

from __future__ import annotations

import contextlib
import queue
import signal

from stalwart.checkpoint import WriteObserved
from stalwart.host.scheduler import Pool
from stalwart.policy import events as ev
from stalwart.preemption import (
    NoticeKind,
    PreemptionNotice,
    Provider,
    ShutdownEvidence,
    make_watcher,
    probe_shutdown,
    sigterm_meaning,
)
from stalwart.remote import UploadResult
from stalwart.supervisor.keeper import AdoptionDone, RetentionDone
from stalwart.supervisor.spawning import LaunchMixin, ResumePrepared
from stalwart.supervisor.state import (
    RECOMPUTE_INTERVAL,
    logger,
)
from stalwart.types import ExitKind, signal_name


class DrainMixin(LaunchMixin):
    """Posted events, stop signals and preemption notices: draining before a deadline."""

    def _start_watchers(self) -> None:
        self._watcher = make_watcher(self.config.preemption)
        if self._watcher is not None:
            watcher = self._watcher
            logger.info(
                "%s: watching for %s preemption notices every %g s",
                self.config.name,
                watcher.provider.value,
                self.config.preemption.poll_interval_s,
            )
            # Its own worker: never queued behind a checkpoint being hashed (issue 17).
            self._scheduler.every(
                "preemption",
                self.config.preemption.poll_interval_s,
                lambda: watcher.poll(self.clock.wall()),
                pool=Pool.PREEMPTION,
            )
        self._scheduler.every(
            "interval",
            self.config.checkpoint.recompute_every_s,
            lambda: RECOMPUTE_INTERVAL,
            first_s=self.config.checkpoint.recompute_every_s,
        )
        self._scheduler.start()

    def post(self, event: object) -> None:
        """From any thread: hand an event to the loop and wake it."""
        self._events.put(event)
        if self._wakeup is not None:
            with contextlib.suppress(OSError):
                self._wakeup[1].send(b"\0")

    def _handle_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, PreemptionNotice):
                self._on_preemption(event)
            elif isinstance(event, ResumePrepared):
                self._on_resume_prepared(event)
            elif isinstance(event, WriteObserved):
                self._on_observed_write(event)
                self.observer.observed(event)
            elif isinstance(event, UploadResult):
                self._on_upload(event)
            elif isinstance(event, RetentionDone):
                self._on_retention(event)
            elif isinstance(event, AdoptionDone):
                log = logger.info if event.ok else logger.warning
                log("%s: adopting %s: %s", self.config.name, event.name, event.detail)
            elif event is RECOMPUTE_INTERVAL and self.pacer is not None:
                running_s = self.attempt.uptime_s() if self.attempt is not None else 0.0
                self.advice.set_interval(self.pacer.recompute(running_s).interval_s)

    def _on_stop_signal(self, signum: int) -> None:
        """SIGINT/SIGTERM/SIGHUP: a stop request, or a preemption when SIGTERM means one."""
        why = signal_name(signum)
        if signum == signal.SIGTERM and self.core.notice is None and not self.core.terminal:
            meaning = sigterm_meaning(
                sigterm_is_preemption=self.config.preemption.sigterm_is_preemption,
                evidence=probe_shutdown()
                if self.config.preemption.sigterm_is_preemption
                else ShutdownEvidence.UNKNOWN,
            )
            if meaning is ExitKind.PREEMPTED:
                self._on_preemption(
                    PreemptionNotice(
                        provider=Provider.SIGNAL,
                        kind=NoticeKind.TERMINATE,
                        deadline_unix=None,
                        detail="SIGTERM while the machine shuts down",
                        event_id="sigterm",
                    )
                )
                return
        self.request_stop(why)

    def _on_preemption(self, notice: PreemptionNotice) -> None:
        """A notice: an advisory one asks for a checkpoint; a binding one goes to the core."""
        if notice.event_id in self._notices_seen:
            return
        self._notices_seen.add(notice.event_id)
        now_unix, now_s = self.clock.wall(), self.clock.monotonic()
        remaining = notice.remaining_s(now_unix)
        logger.warning(
            "%s: %s %s notice (%s)%s",
            self.config.name,
            notice.provider.value,
            notice.kind.value,
            notice.detail,
            f", {remaining:.0f} s left" if remaining is not None else "",
        )
        if notice.advisory:
            self.checkpoint_now(f"{notice.provider.value} {notice.kind.value} recommendation")
            return
        if self.core.notice is not None or self.core.terminal:
            return
        self._preemption = notice
        attempt = self.attempt
        self.feed(
            ev.PreemptionNoticed(
                label=notice.provider.value,
                detail=notice.detail,
                deadline_unix=notice.deadline_unix,
                now_s=now_s,
                now_unix=now_unix,
                trainer_drains_itself=attempt is not None and attempt.hang.armed,
            )
        )

    def _finish_preempted(self, number: int | None) -> str:
        """Acknowledge the notice, say what the next machine resumes from; the final message."""
        notice = self._preemption
        if notice is None:
            return f"{self.config.name}: machine preempted"
        if self._watcher is not None and notice.provider is not Provider.SIGNAL:
            acknowledged = self._watcher.acknowledge(notice)
            if acknowledged:
                logger.info(
                    "%s: acknowledged %s event %s",
                    self.config.name,
                    notice.provider.value,
                    notice.event_id,
                )
        deadline = notice.remaining_s(self.clock.wall())
        self._remote_drain_report(
            self.clock.monotonic() + deadline if deadline is not None else None
        )
        timing = (
            f"{deadline:.1f} s before the deadline"
            if deadline is not None and deadline >= 0
            else "after the deadline"
            if deadline is not None
            else "(no deadline given)"
        )
        after = f"after attempt {number} drained " if number is not None else ""
        return (
            f"{self.config.name}: machine preempted ({notice.detail}); stopped {after}{timing}; "
            "the next start resumes from the newest intact checkpoint"
        )
