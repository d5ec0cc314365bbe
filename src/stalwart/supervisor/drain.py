"""Events from other threads, stop signals, and preemption notices: draining before a deadline."""

from __future__ import annotations

import contextlib
import queue
import signal

from stalwart.checkpoint import WriteObserved
from stalwart.policy.restart import (
    State,
)
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
from stalwart.supervisor.state import (
    RECOMPUTE_INTERVAL,
    SupervisorState,
    logger,
)
from stalwart.types import ExitCode, ExitKind, signal_name


class DrainMixin(SupervisorState):
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
            self._scheduler.every(
                "preemption",
                self.config.preemption.poll_interval_s,
                lambda: watcher.poll(self.clock.wall()),
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
            elif isinstance(event, WriteObserved):
                self._on_observed_write(event)
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
        why = signal_name(signum)
        if signum == signal.SIGTERM and self._preemption is None:
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
        if self._preemption is not None and self._stop_requests == 0 and self.attempt is not None:
            # Already draining for a preemption: a further signal escalates, like a second Ctrl-C.
            self._stop_requests = 1
        self.request_stop(why)

    def _on_preemption(self, notice: PreemptionNotice) -> None:
        """A notice: emergency checkpoint, and for a binding one a drain before the deadline."""
        now_unix, now_s = self.clock.wall(), self.clock.monotonic()
        if notice.event_id in self._notices_seen:
            return
        self._notices_seen.add(notice.event_id)
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
        if self._preemption is not None or self.machine.terminal:
            return
        self._preemption = notice
        self.advice.drain(checkpoint=True, deadline_unix=notice.deadline_unix)
        if self.machine.state is State.BACKOFF:
            self.relaunch_at_s = None
            self._finish_preempted(None)
            return
        attempt = self.attempt
        if attempt is None:
            return
        margin_s = self.config.preemption.drain_margin_s
        if notice.deadline_unix is not None:
            escalate_s = now_s + max(notice.deadline_unix - now_unix - margin_s, 0.0)
        else:
            escalate_s = now_s + self.config.stop.grace_s
        if attempt.hang.armed:
            # A client-instrumented trainer drains itself from the advice file; the stop
            # signal follows at the escalation point, SIGKILL half a margin later.
            attempt.kill_at_s = escalate_s
            attempt.escalate_grace_s = margin_s / 2
        else:
            attempt.send_stop(self.config.stop.signum, max(escalate_s - now_s, 0.0))
        self._running_at_s = None
        self.machine.to(State.STOPPING, f"preempted ({notice.provider.value})")
        self._systemd.stopping(f"preempted: {notice.detail}")
        self._systemd.extend_timeout(max(escalate_s - now_s, 0.0) + margin_s + 5.0)

    def _finish_preempted(self, number: int | None) -> None:
        assert self._preemption is not None
        notice = self._preemption
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
        self.exit_code = ExitCode.PREEMPTED
        self.final_message = (
            f"{self.config.name}: machine preempted ({notice.detail}); stopped {after}{timing}; "
            "the next start resumes from the newest intact checkpoint"
        )
        self.machine.to(State.EXITED, "preempted")
