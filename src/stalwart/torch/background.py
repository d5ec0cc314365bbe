"""One save at a time in a background thread; its result or its error goes back to the
training thread, which collects it at its next call. A failure is never dropped."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """Runs at most one piece of work; `collect` hands back its result or raises its error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def pending(self) -> bool:
        """Work was started and not collected yet (it may have finished)."""
        return self._thread is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[], T]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: the previous work was not collected")

        def run() -> None:
            try:
                self._result = work()
            except BaseException as exc:  # handed to the training thread by collect()
                self._error = exc

        # Not a daemon: an interpreter that exits normally waits for the save to be durable.
        self._thread = threading.Thread(target=run, name=self.name)
        self._thread.start()

    def collect(self, *, wait: bool) -> T | None:
        """The finished work's result (once), None if none or (without `wait`) still running.

        An exception raised by the work is raised here, in the caller's thread.
        """
        thread = self._thread
        if thread is None or (not wait and thread.is_alive()):
            return None
        thread.join()
        self._thread = None
        result, error = self._result, self._error
        self._result, self._error = None, None
        if error is not None:
            raise error
        return result
