"""The `notify` config section: where to send, which events, how often at most."""

from __future__ import annotations

import enum

from pydantic import Field, SecretStr

from stalwart.policy.section import NonNegativeS, PositiveS, Section

NOTIFY_POINTER = "notify.json"
"""In the state dir: the job's notify section as configured (mode 0600), written by the
supervisor at setup, for `stalwart notify test NAME`."""


class NotifyEvent(enum.StrEnum):
    """What a notification can be about."""

    GAVE_UP = "gave_up"
    """The job stopped relaunching: budget spent, a non-retryable failure, rollbacks spent."""
    PREEMPTED = "preempted"
    """The machine is being preempted; the job stopped (exit 75) and resumes elsewhere."""
    ROLLBACK = "rollback"
    """A crash loop: the checkpoint every resume died on was quarantined, rolled back; or
    the loss diverged (NaN, a spike that stayed): rolled back past it, data skipped."""
    HANG_KILLED = "hang_killed"
    """The trainer stopped heartbeating and was killed (its stacks were collected)."""
    SUPERVISOR_ERROR = "supervisor_error"
    """A bug in the supervisor: the trainer was drained, exit 70."""
    COMPLETED = "completed"
    """Training finished."""
    FAILURE = "failure"
    """Every failed attempt (off by default: the rate limit keeps a crash loop quiet)."""


DEFAULT_EVENTS = (
    NotifyEvent.GAVE_UP,
    NotifyEvent.PREEMPTED,
    NotifyEvent.ROLLBACK,
    NotifyEvent.HANG_KILLED,
    NotifyEvent.SUPERVISOR_ERROR,
    NotifyEvent.COMPLETED,
)


class NotifyConfig(Section):
    """Notifications through apprise (`pip install 'stalwart[notify]'`)."""

    urls: list[SecretStr] = []
    """Apprise URLs (slack://, discord://, msteams://, mailto://, ntfy://, tgram://, json://
    ...). `env:NAME` reads the URL from environment variable NAME, `file:PATH` from the
    file's first line (a systemd credential), so secrets stay out of the config; the URLs
    are never printed. Empty: no notifications."""
    events: list[NotifyEvent] = list(DEFAULT_EVENTS)
    """Which events are sent; add `failure` for every failed attempt."""
    rate_limit_per_window: int = Field(default=3, ge=1)
    """Notifications of one event within `rate_window_s`; more are counted and mentioned
    in the next one that is sent, so a crash loop does not page fifty times."""
    rate_window_s: PositiveS = 3600.0
    """The sliding window of the rate limit."""
    retries: int = Field(default=2, ge=0)
    """Deliveries retried after a failure (each URL on its own); then logged and counted."""
    retry_wait_s: NonNegativeS = 2.0
    """Wait before the first retry, doubled for each further one."""
    tail_lines: int = Field(default=10, ge=0, le=200)
    """Last output lines of the trainer quoted in a failure's notification."""
    queue_max: int = Field(default=64, ge=1)
    """Notifications waiting for the sender thread; more are dropped (counted, logged)."""
    flush_timeout_s: NonNegativeS = 10.0
    """At exit, how long the supervisor waits for notifications still being delivered."""
