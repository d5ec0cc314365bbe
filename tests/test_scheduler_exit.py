"""The supervisor's exit never waits for a heavy background job (issue 17).

An adoption of a large foreign checkpoint hashes for seconds per GB; at exit (after a
preemption drain, when the machine has seconds left) the supervisor must not wait for
it. Heavy jobs run on daemon threads that `Scheduler.shutdown` does not join.
"""

from __future__ import annotations

import threading

from stalwart.host.scheduler import Pool, Scheduler


def test_shutdown_returns_while_a_heavy_job_is_still_running() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def adoption() -> None:
        started.set()
        release.wait(30)
        finished.set()

    scheduler = Scheduler(post=lambda _event: None)
    scheduler.start()
    scheduler.submit("adopt:big", adoption, pool=Pool.HEAVY)
    assert started.wait(10)
    scheduler.shutdown()
    assert not finished.is_set(), "shutdown waited for the job"
    release.set()
    for thread in threading.enumerate():
        if thread.name.startswith("stalwart-heavy"):
            thread.join(10)
    assert finished.is_set()


def test_idle_heavy_workers_end_at_shutdown() -> None:
    scheduler = Scheduler(post=lambda _event: None)
    scheduler.start()
    done = threading.Event()
    scheduler.submit("retention", done.set, pool=Pool.HEAVY)
    assert done.wait(10)
    scheduler.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("stalwart-heavy")]
