"""One daemon thread that runs jobs in order, for work the loop must never wait for.

Unlike a thread pool it is never joined at exit: the supervisor can exit (after a stop
during the hash of a large resume checkpoint) while a job is still reading; the process
ending ends it. Jobs post their results to the loop themselves.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job reports its own failures; this is the last resort
                logger.exception("%s: job failed", self._name)

    def close(self, then: Callable[[], None] | None = None, wait_s: float = 0.5) -> None:
        """Run `then` after the queued jobs and stop; wait at most `wait_s` for it."""
        if self._thread is None:
            return
        if then is not None:
            self._jobs.put(then)
        self._jobs.put(None)
        self._thread.join(wait_s)
