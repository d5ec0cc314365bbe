"""The job's metrics in a registry of their own, updated from the supervisor's events.

Names follow Prometheus' naming guide: a `stalwart_` prefix, base units in the name
(`_seconds`, `_bytes`), `_total` on counters. Every series carries `stalwart_job` (the
job name), so one node_exporter can collect several jobs' textfiles. Updates happen on
the loop (a few attribute writes under the client's locks); ages are computed when
scraped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from stalwart.observation import (
    AttemptEnded,
    AttemptStarted,
    CheckpointSaved,
    IntervalAdvised,
    JobEnded,
    JobInfo,
    Observer,
    Preempted,
)
from stalwart.policy.restart import State

SAVE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
LABEL = "stalwart_job"


class _Counts(Collector):
    """`stalwart_notifications_total{event, outcome}` read from the notify sender's counts."""

    def __init__(self, job: str, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._job, self._counts = job, counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "stalwart_notifications",
            "Notifications by event and outcome (sent, failed, dropped, suppressed).",
            labels=[LABEL, "event", "outcome"],
        )
        for (event, outcome), value in sorted(self._counts().items()):
            family.add_metric([self._job, event, outcome], value)
        yield family


class JobMetrics(Observer):
    """The metrics of one supervised job; `registry` is what the exporters serve."""

    def __init__(
        self,
        name: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.registry = CollectorRegistry(auto_describe=True)
        self._monotonic, self._wall = monotonic, wall
        self._beat_s: float | None = None
        self._ckpt_unix: float | None = None
        labels = [LABEL]

        def gauge(metric: str, text: str, unit: str = "") -> Any:
            return Gauge(metric, text, labels, unit=unit, registry=self.registry).labels(name)

        def counter(metric: str, text: str, unit: str = "") -> Any:
            return Counter(metric, text, labels, unit=unit, registry=self.registry).labels(name)

        def histogram(metric: str, text: str) -> Any:
            return Histogram(
                metric, text, labels, unit="seconds", buckets=SAVE_BUCKETS_S, registry=self.registry
            ).labels(name)

        self.up = gauge("stalwart_up", "1 while the supervisor runs the job, 0 once it ended.")
        self.state = Enum(
            "stalwart_state",
            "The supervisor's state of the job.",
            labels,
            states=[s.value for s in State],
            registry=self.registry,
        ).labels(name)
        self.attempts = counter("stalwart_attempts", "Attempts started.")
        self._failures = Counter(
            "stalwart_failures",
            "Attempts that ended in a failure, by kind (PREEMPTED, OOM, HANG, ...).",
            [LABEL, "kind"],
            registry=self.registry,
        )
        self.preemptions = counter("stalwart_preemptions", "Binding preemption notices.")
        self.rollbacks = counter("stalwart_rollbacks", "Crash-loop rollbacks (poison checkpoints).")
        self.budget_left = gauge(
            "stalwart_restart_budget_remaining", "Relaunches left in the restart window."
        )
        gauge(
            "stalwart_heartbeat_age", "Seconds since the trainer's last heartbeat.", "seconds"
        ).set_function(self._heartbeat_age_s)
        self.last_step = gauge("stalwart_last_step", "The trainer's last reported step.")
        self.ckpt_step = gauge(
            "stalwart_checkpoint_step", "Step of the newest intact checkpoint (-1: none)."
        )
        self.ckpt_step.set(-1)
        self.ckpt_time = gauge(
            "stalwart_checkpoint_timestamp",
            "Unix time the newest intact checkpoint was written.",
            "seconds",
        )
        gauge(
            "stalwart_checkpoint_age", "Seconds since the newest intact checkpoint.", "seconds"
        ).set_function(self._checkpoint_age_s)
        self.ckpt_size = gauge(
            "stalwart_checkpoint_size", "Size of the newest checkpoint reported.", "bytes"
        )
        self.stall = histogram(
            "stalwart_checkpoint_stall", "Training time blocked by each save (C samples)."
        )
        self.persist = histogram(
            "stalwart_checkpoint_persist", "Time from each save's start until it was durable."
        )
        self.interval = gauge(
            "stalwart_checkpoint_interval", "The advised checkpoint interval.", "seconds"
        )
        self.cost = gauge(
            "stalwart_checkpoint_cost", "C: the save cost the interval is computed from.", "seconds"
        )
        self.mtbf = gauge(
            "stalwart_mtbf", "M: the estimated mean time between failures.", "seconds"
        )
        self.restart_cost = gauge(
            "stalwart_restart_cost", "R: launch to first step of recent attempts.", "seconds"
        )
        self.work_lost = counter(
            "stalwart_work_lost",
            "Training time lost to failures (since each failed attempt's last checkpoint).",
            "seconds",
        )
        self.up.set(1)

    def add_notification_counts(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.registry.register(_Counts(self.name, counts))

    def _heartbeat_age_s(self) -> float:
        beat = self._beat_s
        return self._monotonic() - beat if beat is not None else math.nan

    def _checkpoint_age_s(self) -> float:
        at = self._ckpt_unix
        return max(self._wall() - at, 0.0) if at is not None else math.nan

    # Observer hooks (on the loop).

    def job_started(self, job: JobInfo) -> None:
        self.up.set(1)
        self.budget_left.set(job.max_restarts)

    def state_changed(self, state: str) -> None:
        self.state.state(state)

    def attempt_started(self, started: AttemptStarted) -> None:
        self.attempts.inc()
        self._beat_s = None
        # The checkpoint it resumes from is the newest intact one (the resume verified it).
        if started.resume_step is not None:
            self.ckpt_step.set(started.resume_step)
        if started.resume_written_unix is not None:
            self._ckpt_unix = started.resume_written_unix
            self.ckpt_time.set(started.resume_written_unix)

    def heartbeat(self, step: int | None, now_s: float) -> None:
        self._beat_s = now_s
        if step is not None:
            self.last_step.set(step)

    def checkpoint_saved(self, saved: CheckpointSaved) -> None:
        if saved.step is not None:
            self.ckpt_step.set(saved.step)
        self._ckpt_unix = saved.now_unix
        self.ckpt_time.set(saved.now_unix)
        if saved.size_bytes is not None:
            self.ckpt_size.set(saved.size_bytes)
        if saved.stall_s is not None:
            self.stall.observe(saved.stall_s)
        if saved.persist_s is not None:
            self.persist.observe(saved.persist_s)

    def interval_advised(self, advised: IntervalAdvised) -> None:
        self.interval.set(advised.interval_s)
        self.mtbf.set(advised.mtbf_s)
        if advised.ckpt_s is not None:
            self.cost.set(advised.ckpt_s)
        if advised.restart_s is not None:
            self.restart_cost.set(advised.restart_s)

    def preempted(self, notice: Preempted) -> None:
        self.preemptions.inc()

    def attempt_ended(self, ended: AttemptEnded) -> None:
        self._beat_s = None
        if ended.kind.is_failure:
            self._failures.labels(self.name, ended.kind.value).inc()
            self.work_lost.inc(max(ended.work_lost_s, 0.0))
        if ended.rolled_back is not None:
            self.rollbacks.inc()
        self.budget_left.set(ended.restart_budget_left)

    def job_ended(self, ended: JobEnded) -> None:
        self.up.set(0)
