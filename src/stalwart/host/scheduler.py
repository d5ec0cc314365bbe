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

import enum
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
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


class Scheduler:
    def __init__(self, post: Callable[[object], None], heavy_workers: int = 2) -> None:
        self._post = post
        self._scheduler = BackgroundScheduler(
            executors={
                Pool.LIGHT.value: ThreadPoolExecutor(1),
                Pool.PREEMPTION.value: ThreadPoolExecutor(1),
                Pool.HEAVY.value: ThreadPoolExecutor(heavy_workers),
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
