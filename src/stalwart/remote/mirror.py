"""The remote mirror: uploads committed checkpoints in a background thread of its own.

One upload at a time, the newest checkpoint preferred: a pending upload that a newer one
overtakes is skipped (reported SUPERSEDED), never queued forever. An urgent upload (the
emergency checkpoint on a preemption notice) goes first, and stops a less urgent one in
flight. Remote trouble is retried with exponential backoff until the upload succeeds, a
newer checkpoint replaces it, or the mirror closes. The caller is never blocked: `enqueue`
only takes a lock, and each result goes to `on_result`, called from the mirror's thread.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stalwart.checkpoint.layout import parse_step
from stalwart.clock import Clock, SystemClock
from stalwart.remote.config import RemoteConfig
from stalwart.remote.location import Remote, TransferAborted, describe_error
from stalwart.remote.retention import prune_remote
from stalwart.remote.upload import LocalCheckpointError, Uploaded, upload_checkpoint

logger = logging.getLogger(__name__)

RESULTS_KEPT = 64
"""Results remembered for `wait_for`, newest kept."""


class UploadOutcome(enum.Enum):
    UPLOADED = "uploaded"
    """The remote manifest is durable: the checkpoint survives the machine."""
    ALREADY_REMOTE = "already remote"
    """An identical copy was already there."""
    SUPERSEDED = "superseded"
    """Skipped or stopped for a newer (or urgent) checkpoint."""
    FAILED = "failed"
    """The local checkpoint is gone or fails verification; not retried."""
    CANCELLED = "cancelled"
    """The mirror closed first."""


@dataclass(frozen=True)
class UploadResult:
    """What became of one enqueued checkpoint (one result per enqueue that was accepted)."""

    name: str
    step: int
    outcome: UploadOutcome
    urgent: bool
    remote_url: str
    size_bytes: int
    """The checkpoint's bytes, its manifest included (0 when never read)."""
    sent_bytes: int
    """Bytes uploaded by the last attempt (0 when nothing was sent)."""
    persist_s: float | None
    """From enqueue until the remote manifest was durable; None unless `ok`."""
    attempts: int
    """Upload attempts made (0: never started)."""
    error: str | None
    """Why it failed, or the last failure before a success or a skip (None: none)."""
    pruned: tuple[str, ...] = ()
    """Remote checkpoints deleted by retention after this upload."""

    @property
    def ok(self) -> bool:
        return self.outcome in (UploadOutcome.UPLOADED, UploadOutcome.ALREADY_REMOTE)


@dataclass(frozen=True)
class MirrorStatus:
    """A snapshot for status views."""

    remote_url: str
    in_flight: str | None
    pending: tuple[str, ...]
    """Urgent first."""
    failures: int
    """Consecutive failed attempts of the upload in flight."""
    last_error: str | None
    newest_durable: str | None
    """The newest checkpoint this mirror made durable (or was given at start)."""


@dataclass
class _Job:
    path: Path
    name: str
    step: int
    urgent: bool
    enqueued_s: float
    attempts: int = 0
    failures: int = 0
    last_error: str | None = None


class _Stop(enum.Enum):
    SUPERSEDED = "superseded"
    CLOSING = "closing"


class RemoteMirror:
    """Uploads committed checkpoints to a remote root; see the module docstring.

    mirror = RemoteMirror(remote, config, on_result=post_event)
    mirror.start()
    mirror.enqueue(committed.path)                # after each local commit
    mirror.enqueue(emergency.path, urgent=True)   # on a preemption notice
    mirror.wait(deadline_s - now_s)               # on drain: True when all are done
    mirror.close()
    """

    def __init__(
        self,
        remote: Remote,
        config: RemoteConfig,
        *,
        on_result: Callable[[UploadResult], None] | None = None,
        clock: Clock | None = None,
        newest_durable: str | None = None,
    ) -> None:
        self.remote = remote
        self.config = config
        self.on_result = on_result
        self.clock: Clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._urgent: _Job | None = None
        self._normal: _Job | None = None
        self._in_flight: _Job | None = None
        self._stop_in_flight: _Stop | None = None
        self._to_report: list[UploadResult] = []
        self._results: OrderedDict[str, UploadResult] = OrderedDict()
        self._newest_durable = newest_durable
        self._reporting = False
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- the caller's side (any thread; never blocks on the remote) --------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("the remote mirror is already started")
            if self._closing:
                raise RuntimeError("the remote mirror is closed")
            # A daemon: a remote call that hangs must not keep the process from exiting.
            self._thread = threading.Thread(target=self._work, name="stalwart-remote", daemon=True)
            self._thread.start()

    def enqueue(self, local_checkpoint: Path, *, urgent: bool = False) -> bool:
        """Ask for a committed checkpoint (`.../step-000001234`) to be uploaded.

        False (with a warning) when it cannot be: not a managed checkpoint's name, or the
        mirror is closed. An older pending upload of the same urgency is skipped.
        """
        path = Path(local_checkpoint)
        step = parse_step(path.name)
        if step is None:
            logger.warning(
                "not uploading %s: only managed checkpoints (step-NNNNNNNNN) are mirrored", path
            )
            return False
        job = _Job(path, path.name, step, urgent, self.clock.monotonic())
        with self._cond:
            if self._closing:
                logger.warning("not uploading %s: the remote mirror is closed", path.name)
                return False
            flight = self._in_flight
            if flight is not None and flight.name == job.name:
                if urgent and not flight.urgent:
                    flight.urgent = True
                return True
            slot = self._urgent if urgent else self._normal
            if slot is not None and slot.step >= step:
                if slot.name != job.name:
                    self._to_report.append(self._skipped(job, f"{slot.name} is newer"))
                self._cond.notify_all()
                return True
            if slot is not None:
                self._to_report.append(self._skipped(slot, f"{job.name} is newer"))
            if urgent:
                self._urgent = job
                if self._normal is not None and self._normal.step <= step:
                    self._to_report.append(self._skipped(self._normal, f"{job.name} is urgent"))
                    self._normal = None
                if flight is not None and (not flight.urgent or flight.step < step):
                    self._stop_in_flight = _Stop.SUPERSEDED
            else:
                self._normal = job
            self._cond.notify_all()
        return True

    def wait(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or in flight; False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(self._idle, timeout=max(0.0, timeout_s))

    def wait_for(self, name: str, timeout_s: float) -> UploadResult | None:
        """Wait for the (latest) result of one checkpoint's upload; None if `timeout_s`
        passed first."""
        with self._cond:
            self._cond.wait_for(lambda: name in self._results, timeout=max(0.0, timeout_s))
            return self._results.get(name)

    def status(self) -> MirrorStatus:
        with self._cond:
            pending = tuple(j.name for j in (self._urgent, self._normal) if j is not None)
            flight = self._in_flight
            return MirrorStatus(
                remote_url=self.remote.url,
                in_flight=flight.name if flight else None,
                pending=pending,
                failures=flight.failures if flight else 0,
                last_error=flight.last_error if flight else None,
                newest_durable=self._newest_durable,
            )

    @property
    def newest_durable(self) -> str | None:
        """The newest checkpoint this mirror made durable, or the one it was given at start
        (the restored one): what a new machine resumes from, unless the remote holds a newer
        one from before (a restore takes the newest that verifies)."""
        with self._cond:
            return self._newest_durable

    def busy_names(self) -> frozenset[str]:
        """Checkpoints pending or in flight: local retention should not delete these yet."""
        with self._cond:
            jobs = (self._urgent, self._normal, self._in_flight)
            return frozenset(j.name for j in jobs if j is not None)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop: the upload in flight is abandoned at its next progress report, pending ones
        are reported CANCELLED. False if the thread did not end within `timeout_s`."""
        with self._cond:
            self._closing = True
            if self._in_flight is not None:
                self._stop_in_flight = _Stop.CLOSING
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning(
                "the remote mirror did not stop within %.1f s (a remote call is hanging); "
                "leaving it behind",
                timeout_s,
            )
            return False
        return True

    def __enter__(self) -> RemoteMirror:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the mirror's thread -----------------------------------------------------------

    def _idle(self) -> bool:
        return (
            self._urgent is None
            and self._normal is None
            and self._in_flight is None
            and not self._to_report
            and not self._reporting
        )

    def _skipped(self, job: _Job, why: str) -> UploadResult:
        logger.info("skipping the upload of %s: %s", job.name, why)
        return self._result(job, UploadOutcome.SUPERSEDED, error=job.last_error)

    def _result(
        self,
        job: _Job,
        outcome: UploadOutcome,
        *,
        uploaded: Uploaded | None = None,
        error: str | None = None,
        persist_s: float | None = None,
        pruned: tuple[str, ...] = (),
    ) -> UploadResult:
        return UploadResult(
            name=job.name,
            step=job.step,
            outcome=outcome,
            urgent=job.urgent,
            remote_url=self.remote.show(job.name),
            size_bytes=uploaded.size_bytes if uploaded else 0,
            sent_bytes=uploaded.sent_bytes if uploaded else 0,
            persist_s=persist_s,
            attempts=job.attempts,
            error=error,
            pruned=pruned,
        )

    def _take(self) -> tuple[_Job | None, list[UploadResult]]:
        """The next job, and results to report first; (None, [...]) when closing."""
        with self._cond:
            while True:
                reports, self._to_report = self._to_report, []
                if self._closing:
                    for job in (self._urgent, self._normal):
                        if job is not None:
                            reports.append(self._result(job, UploadOutcome.CANCELLED))
                    self._urgent = self._normal = None
                    self._reporting = bool(reports)
                    return None, reports
                job = self._urgent or self._normal
                if job is not None:
                    if job is self._urgent:
                        self._urgent = None
                    else:
                        self._normal = None
                    self._in_flight = job
                    self._stop_in_flight = None
                if job is not None or reports:
                    self._reporting = bool(reports)
                    return job, reports
                self._cond.wait()

    def _report(self, results: list[UploadResult]) -> None:
        for result in results:
            if self.on_result is not None:
                try:
                    self.on_result(result)
                except Exception:
                    logger.exception("the remote mirror's result callback failed")
        with self._cond:
            for result in results:
                self._results[result.name] = result
                self._results.move_to_end(result.name)
                while len(self._results) > RESULTS_KEPT:
                    self._results.popitem(last=False)
            self._reporting = False
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            job, reports = self._take()
            self._report(reports)
            if job is None:
                with self._cond:
                    if self._closing:
                        return
                continue
            result = self._upload(job)
            with self._cond:
                self._in_flight = None
                self._stop_in_flight = None
                self._reporting = True
                if result.ok:
                    known = parse_step(self._newest_durable or "")
                    if known is None or job.step >= known:
                        self._newest_durable = job.name
            self._report([result])

    def _should_stop(self) -> bool:
        return self._stop_in_flight is not None

    def _newer_pending(self, job: _Job) -> bool:
        return any(
            other is not None and (other.step > job.step or (other.urgent and not job.urgent))
            for other in (self._urgent, self._normal)
        )

    def _stopped(self, job: _Job) -> UploadResult:
        with self._cond:
            reason = self._stop_in_flight
        if reason is _Stop.CLOSING:
            logger.info("upload of %s abandoned: the remote mirror is closing", job.name)
            return self._result(job, UploadOutcome.CANCELLED, error=job.last_error)
        logger.info("upload of %s stopped for a newer or urgent checkpoint", job.name)
        return self._result(job, UploadOutcome.SUPERSEDED, error=job.last_error)

    def _upload(self, job: _Job) -> UploadResult:
        while True:
            if self._should_stop():
                return self._stopped(job)
            job.attempts += 1
            try:
                uploaded = upload_checkpoint(self.remote, job.path, abort=self._should_stop)
            except TransferAborted:
                return self._stopped(job)
            except LocalCheckpointError as exc:
                logger.error("cannot upload %s: %s", job.name, exc)
                return self._result(job, UploadOutcome.FAILED, error=str(exc))
            except Exception as exc:
                job.failures += 1
                job.last_error = describe_error(exc)
                delay_s = self.config.retry_delay_s(job.failures)
                logger.warning(
                    "upload of %s to %s failed (attempt %d): %s; retrying in %.1f s",
                    job.name,
                    self.remote.url,
                    job.attempts,
                    job.last_error,
                    delay_s,
                )
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._closing or self._newer_pending(job), timeout=delay_s
                    )
                    if self._closing:
                        self._stop_in_flight = _Stop.CLOSING
                    elif self._newer_pending(job):
                        self._stop_in_flight = _Stop.SUPERSEDED
                continue
            persist_s = self.clock.monotonic() - job.enqueued_s
            outcome = (
                UploadOutcome.UPLOADED if uploaded.sent_bytes else UploadOutcome.ALREADY_REMOTE
            )
            logger.info(
                "checkpoint %s is durable at %s (%d bytes, %.2f s after its commit was "
                "reported, %d attempt(s))",
                job.name,
                self.remote.show(job.name),
                uploaded.size_bytes,
                persist_s,
                job.attempts,
            )
            pruned: tuple[str, ...] = ()
            with self._cond:
                urgent_waiting = self._urgent is not None or self._closing
            if not urgent_waiting:
                pruned = prune_remote(self.remote, self.config.keep_last, protect=(job.name,))
            return self._result(
                job,
                outcome,
                uploaded=uploaded,
                error=job.last_error,
                persist_s=persist_s,
                pruned=pruned,
            )
