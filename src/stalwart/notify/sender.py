"""Delivery through apprise on a thread of its own: a bounded queue, a few retries, counts.

The loop only hands a message over (`submit`, never blocking: a full queue drops it,
counted and logged); the thread delivers it to each URL on its own, retries a failed one
a little, and logs and counts what still fails. Nothing here is ever fatal to the job.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart.errors import UsageError
from stalwart.notify.config import NotifyConfig
from stalwart.notify.message import Message

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'stalwart[notify]'"


@dataclass(frozen=True)
class Target:
    """One configured URL: where it is in the config, a printable (secret-free) form."""

    key: str
    """`notify.urls[N]`."""
    shown: str
    """The URL with its secrets masked by apprise."""
    send: Callable[[Message], bool]


def _resolve(key: str, raw: str, environ: Mapping[str, str]) -> str:
    """`env:NAME` and `file:PATH` references; a literal URL as it is."""
    if raw.startswith("env:"):
        name = raw[4:]
        value = environ.get(name, "").strip()
        if not value:
            raise UsageError(f"{key}: environment variable {name} is not set or empty")
        return value
    if raw.startswith("file:"):
        path = Path(raw[5:]).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise UsageError(f"{key}: {path} is empty (it should hold one apprise URL)")
        return value
    return raw.strip()


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://" if sep and len(scheme) <= 32 else "(no scheme://)"


def build_targets(config: NotifyConfig, environ: Mapping[str, str]) -> list[Target]:
    """Every URL resolved and understood by apprise, or a UsageError naming its key (exit 2).

    The error shows the scheme only: the rest of a URL is often a token.
    """
    if not config.urls:
        return []
    try:
        # Some of apprise's plugins import modules Python deprecates (imghdr): theirs to fix.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise
    except ImportError:
        raise UsageError(
            f"notify.urls is set but apprise is not installed: {INSTALL_HINT}"
        ) from None
    logging.getLogger("apprise").setLevel(logging.CRITICAL)  # ours say it, without secrets
    targets = []
    for index, secret in enumerate(config.urls):
        key = f"notify.urls[{index}]"
        url = _resolve(key, secret.get_secret_value(), environ)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            plugin: Any = apprise.Apprise.instantiate(url)
        if plugin is None:
            raise UsageError(
                f"{key}: apprise does not understand this URL (scheme {_scheme(url)}); "
                "fix `notify.urls` (apprise's wiki lists the services and their URLs)"
            )

        # The plugin itself, not an `Apprise` around it: it sends in the calling thread (ours)
        # instead of apprise's process-wide pools, whose threads would outlive the sender.
        def send(message: Message, plugin: Any = plugin) -> bool:
            return bool(
                plugin.notify(body=message.body, title=message.title, notify_type=message.severity)
            )

        targets.append(Target(key, str(plugin.url(privacy=True)), send))
    return targets


class Sender:
    """The sender thread. `submit` never blocks; `close` waits at most `flush_timeout_s`."""

    def __init__(
        self,
        targets: list[Target],
        config: NotifyConfig,
        *,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        self._targets = targets
        self._config = config
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=config.queue_max)
        self._deadline_s: float | None = None
        """Set by `close`: no retry is started that would end after it."""
        self._wait = wait or time.sleep
        self._lock = threading.Lock()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        """(event, outcome) -> count; outcomes: sent, failed, dropped, suppressed."""
        self._thread = threading.Thread(target=self._run, name="stalwart-notify", daemon=True)
        self._thread.start()

    def count(self, event: str, outcome: str) -> None:
        with self._lock:
            self.counts[(event, outcome)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.counts)

    def submit(self, message: Message) -> bool:
        """Hand over a message; False (dropped, counted) when the queue is full."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.count(message.event.value, "dropped")
            logger.warning(
                "notification dropped (%s): %d are waiting for delivery already",
                message.event.value,
                self._config.queue_max,
            )
            return False
        return True

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            for target in self._targets:
                self._deliver(target, message)

    def _deliver(self, target: Target, message: Message) -> None:
        tries = self._config.retries + 1
        delay_s = self._config.retry_wait_s
        for attempt in range(1, tries + 1):
            try:
                ok = target.send(message)
                error = "" if ok else "the service refused it or did not answer"
            except Exception as exc:  # a plugin's bug must not end the thread
                ok, error = False, f"{type(exc).__name__}: {exc}"
            if ok:
                self.count(message.event.value, "sent")
                logger.info("notified %s (%s)", target.key, message.event.value)
                return
            deadline_s = self._deadline_s
            last = attempt == tries or (
                deadline_s is not None and time.monotonic() + delay_s >= deadline_s
            )
            logger.warning(
                "%s (%s): delivery of '%s' failed (try %d of %d): %s%s",
                target.key,
                target.shown,
                message.event.value,
                attempt,
                tries,
                error,
                "" if last else f"; retrying in {delay_s:g} s",
            )
            if last:
                break
            self._wait(delay_s)
            delay_s *= 2
        self.count(message.event.value, "failed")

    def close(self) -> None:
        """Deliver what is queued within `flush_timeout_s`, then leave (daemon thread)."""
        deadline_s = time.monotonic() + self._config.flush_timeout_s
        self._deadline_s = deadline_s
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=self._config.flush_timeout_s)
        self._thread.join(max(deadline_s - time.monotonic(), 0.0))
        if self._thread.is_alive():
            logger.warning(
                "notifications: %d still undelivered after notify.flush_timeout_s=%g s; "
                "leaving them",
                self._queue.qsize() + 1,
                self._config.flush_timeout_s,
            )


def write_private(path: Path, text: str) -> None:
    """A file only this user can read (it may hold a URL with a token)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
