"""The supervisor's events turned into notifications: which events, the rate limit, handoff.

Runs on the loop: it only builds text and hands it to the sender thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stalwart.notify.config import NotifyConfig, NotifyEvent
from stalwart.notify.message import (
    Message,
    RateLimiter,
    attempt_message,
    event_of_attempt,
    event_of_job,
    job_message,
)
from stalwart.notify.sender import Sender
from stalwart.observation import (
    AttemptEnded,
    JobEnded,
    JobInfo,
    Observer,
)
from stalwart.types import ExitKind

logger = logging.getLogger(__name__)


class NotifyObserver(Observer):
    def __init__(
        self,
        config: NotifyConfig,
        sender: Sender,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._events = frozenset(config.events)
        self._sender = sender
        self._monotonic = monotonic
        self._limiter = RateLimiter(config.rate_limit_per_window, config.rate_window_s)
        self._job: JobInfo | None = None
        self._last_failure: AttemptEnded | None = None
        self._completed = False

    def job_started(self, job: JobInfo) -> None:
        self._job = job

    def _admit(self, event: NotifyEvent) -> int | None:
        if event not in self._events or self._job is None:
            return None
        suppressed = self._limiter.admit(event, self._monotonic())
        if suppressed is None:
            self._sender.count(event.value, "suppressed")
            logger.info("notification '%s' suppressed by the rate limit", event.value)
        return suppressed

    def _send(self, message: Message) -> None:
        self._sender.submit(message)

    def attempt_ended(self, ended: AttemptEnded) -> None:
        self._completed = ended.kind is ExitKind.COMPLETED
        if ended.kind.is_failure and ended.kind is not ExitKind.PREEMPTED:
            self._last_failure = ended
        event = event_of_attempt(ended)
        if event is None:
            return
        suppressed = self._admit(event)
        if suppressed is not None and self._job is not None:
            self._send(
                attempt_message(
                    self._job,
                    event,
                    ended,
                    ended.newest_checkpoint,
                    tail_lines=self._config.tail_lines,
                    suppressed=suppressed,
                )
            )

    def job_ended(self, ended: JobEnded) -> None:
        event = event_of_job(ended, self._completed)
        if event is None:
            return
        suppressed = self._admit(event)
        if suppressed is not None and self._job is not None:
            self._send(
                job_message(
                    self._job,
                    event,
                    ended,
                    self._last_failure,
                    tail_lines=self._config.tail_lines,
                    suppressed=suppressed,
                )
            )

    def close(self) -> None:
        self._sender.close()
        counts = self._sender.snapshot()
        sent = sum(n for (_, outcome), n in counts.items() if outcome == "sent")
        failed = sum(n for (_, outcome), n in counts.items() if outcome == "failed")
        if sent or failed:
            logger.info("notifications: %d delivered, %d failed", sent, failed)
