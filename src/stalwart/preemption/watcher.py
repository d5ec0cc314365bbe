"""The shell shared by the cloud watchers: a lock, never raising, logging notices once."""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

from stalwart.preemption.model import PreemptionNotice, Provider
from stalwart.preemption.transport import (
    BadResponse,
    ErrorLog,
    MetadataError,
    Response,
    fetch,
    parse_base_url,
)

T = TypeVar("T")


def parsed(path: str, parse: Callable[[], T]) -> T:
    """Run a pure parser; its BadResponse becomes a MetadataError keyed by `path`."""
    try:
        return parse()
    except BadResponse as exc:
        raise MetadataError("bad-response", path, str(exc)) from None


class PollingWatcher(abc.ABC):
    """Base of the HTTP watchers. Subclasses implement `_check`, which may raise."""

    provider: Provider
    headers: Mapping[str, str] = {}

    def __init__(self, base_url: str, *, timeout_s: float, log: logging.Logger) -> None:
        self._endpoint = parse_base_url(base_url)
        self._timeout_s = timeout_s
        self._log = log
        self._lock = threading.Lock()
        self._errors = ErrorLog(log, f"{self.provider.value} metadata")
        self._current_event_id: str | None = None

    @property
    def base_url(self) -> str:
        return self._endpoint.url("")

    def poll(self, now_unix: float) -> PreemptionNotice | None:
        """The notice in effect now, or None: no notice, or the service failed (logged).

        None after a notice is not a withdrawal the caller should trust blindly: a
        metadata service may stop answering as the machine goes down. Treat a binding
        notice as settled once seen.
        """
        with self._lock:
            try:
                notice = self._check(now_unix)
            except MetadataError as exc:
                self._errors.failed(exc.key, str(exc))
                notice = None
            except Exception as exc:
                # A bug here must not take down the scheduler thread; say so loudly, once.
                self._errors.failed(
                    f"unexpected {type(exc).__name__}", f"unexpected error: {exc}", exc_info=True
                )
                notice = None
            else:
                # A failed poll says nothing about the notice, so only an answer changes it.
                self._note(notice, now_unix)
            self._errors.poll_done()
            return notice

    def acknowledge(self, notice: PreemptionNotice) -> bool:
        """Clouds without an acknowledgement API accept nothing."""
        return False

    @abc.abstractmethod
    def _check(self, now_unix: float) -> PreemptionNotice | None:
        """One poll; raises MetadataError on any failure."""

    def _request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        return fetch(
            self._endpoint,
            method,
            target,
            headers={**self.headers, **(headers or {})},
            timeout_s=self._timeout_s,
            body=body,
        )

    def _note(self, notice: PreemptionNotice | None, now_unix: float) -> None:
        event_id = notice.event_id if notice is not None else None
        if event_id == self._current_event_id:
            return
        self._current_event_id = event_id
        if notice is None:
            self._log.info("%s: the preemption notice is withdrawn", self.provider.value)
            return
        remaining_s = notice.remaining_s(now_unix)
        self._log.warning(
            "%s %s notice%s: %s (%s)",
            self.provider.value,
            notice.kind.value,
            " (advisory)" if notice.advisory else "",
            notice.detail,
            "no deadline given" if remaining_s is None else f"deadline in {remaining_s:.0f} s",
        )
