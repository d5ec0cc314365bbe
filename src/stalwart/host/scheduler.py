"""Periodic background work: the project's only APScheduler user.

Jobs run in the scheduler's threads and may block on I/O (a metadata poll with
its own short timeout); they never act: each result that is not None is posted
to the supervisor loop, which decides.

Each job runs in one of three pools of its own threads (`Pool`), so a job can wait
only behind jobs of its own kind: preemption polls have a worker no other job uses
(a notice leaves 30 s on GCP), and the jobs that read whole checkpoints under the
keeper lock (adoption, retention: seconds per GB, and one waiting for the lock holds
its worker meanwhile) have theirs.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import BasePoolExecutor, ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

logger = logging.getLogger(__name__)

# APScheduler logs every run at INFO; keep its warnings (missed runs) only.
logging.getLogger("apscheduler").setLevel(logging.WARNING)


class Pool(enum.StrEnum):
    """Which threads run a job (the APScheduler executor's name)."""

    LIGHT = "default"
    """Short jobs that only compute or post (the interval recompute tick)."""
    PREEMPTION = "preemption"
    """Metadata polls: one worker that nothing else uses, never queued behind other jobs."""
    HEAVY = "heavy"
    """Jobs that hash or list whole checkpoints under the keeper lock (adoption, retention)."""


SHUTDOWN_WAIT_S = 0.5
_Item = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    """The part of `concurrent.futures.ThreadPoolExecutor` APScheduler uses, on daemon
    threads that exit never waits for.

    A job still hashing when the supervisor ends (an adoption of a large foreign
    checkpoint) must not hold up its exit, and it need not finish: adoption writes its
    manifest by rename, a prune cut short leaves a `.deleting-*` entry that the next start
    removes, and both are done again when needed.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._workers, self._name = workers, name
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self._threads:  # started on first use: an idle pool has no threads
            self._threads = [
                threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
                for i in range(self._workers)
            ]
            for thread in self._threads:
                thread.start()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; idle workers end now, a job in flight is left to finish or to
        end with the process (`wait` waits SHUTDOWN_WAIT_S at most)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + (SHUTDOWN_WAIT_S if wait else 0.0)
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))


class DaemonPoolExecutor(BasePoolExecutor):  # type: ignore[misc]
    """An APScheduler executor over a `DaemonPool`."""

    def __init__(self, workers: int, name: str) -> None:
        super().__init__(DaemonPool(workers, name))


class Scheduler:
    def __init__(self, post: Callable[[object], None], heavy_workers: int = 2) -> None:
        self._post = post
        self._scheduler = BackgroundScheduler(
            executors={
                Pool.LIGHT.value: ThreadPoolExecutor(1),
                Pool.PREEMPTION.value: ThreadPoolExecutor(1),
                Pool.HEAVY.value: DaemonPoolExecutor(heavy_workers, "stalwart-heavy"),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._started = False

    def _wrap(self, name: str, job: Callable[[], object | None]) -> Callable[[], None]:
        def run() -> None:
            try:
                result = job()
            except Exception:  # a broken job must not kill the scheduler or the loop
                logger.exception("background job %s failed", name)
                return
            if result is not None:
                self._post(result)

        return run

    def every(
        self,
        name: str,
        interval_s: float,
        job: Callable[[], object | None],
        *,
        first_s: float = 0,
        pool: Pool = Pool.LIGHT,
    ) -> None:
        """Run `job` every `interval_s` (first after `first_s`) in `pool`; post what it returns."""

        self._scheduler.add_job(
            self._wrap(name, job),
            "interval",
            seconds=interval_s,
            id=name,
            name=name,
            executor=Pool(pool).value,
            next_run_time=datetime.now(UTC) + timedelta(seconds=first_s),
        )

    def submit(
        self, name: str, job: Callable[[], object | None], *, pool: Pool = Pool.LIGHT
    ) -> None:
        """Run `job` once, now, in `pool`; post what it returns.

        A submission while the same job is still pending replaces it (the newest wins).
        """
        self._scheduler.add_job(
            self._wrap(name, job),
            "date",
            run_date=datetime.now(UTC),
            id=name,
            name=name,
            executor=Pool(pool).value,
            replace_existing=True,
        )

    def start(self) -> None:
        """Start the worker threads (one-off jobs submitted before this wait for it)."""
        self._scheduler.start()
        self._started = True

    def shutdown(self) -> None:
        if self._started:
            self._scheduler.shutdown(wait=True)
            self._started = False
