"""Overlapped snapshots: parameters and optimizer state copied while training goes on.

Parameters and optimizer state change only at the optimizer's step, so their copy into
the snapshot buffers can overlap the next step's forward and backward (CheckFreq, FAST'21).
The Checkpointer copies the small state at once, hands the rest to an `OverlappedCopy`
that the save's background thread runs, and the training thread `settle`s it where the
state would change under the copy: in a step pre-hook of every optimizer, or at the next
`step_end` when there is none. On CUDA the copies run on a side stream into pinned
buffers; settling makes the training stream wait for them with an event, not the host.

The guard against torn snapshots: each tensor's version counter (`Tensor._version`, which
every in-place write bumps, under `torch.no_grad()` too) is recorded when its copy is
scheduled and checked when the copy is done (on CUDA: when its event has completed, so a
kernel enqueued earlier, which may have run alongside it, has bumped its counter). A
changed tensor makes the write raise `TornSnapshot` before anything is written; the
Checkpointer then retakes the snapshot synchronously at the next step boundary.

On the CPU an in-place op bumps the counter when it ends, so one still running when the
copy ends is not seen yet. The write therefore waits for the training thread to settle
(every op it started has ended, and the counters are checked again there) or, if it does
not reach a settle point soon, for SETTLE_GRACE_S (at least the copy's own duration)
after the copy, then checks again: only an in-place op on one tensor that outlasts that
grace could go unseen.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from stalwart.torch.tree import copy_into

logger = logging.getLogger(__name__)

SETTLE_GRACE_S = 1.0
"""How long after the copy the write waits for the training thread to settle, at most."""


class TornSnapshot(Exception):
    """Tensors changed in place while their snapshot was being copied; the save is void."""

    def __init__(self, step: int, changed: list[str]) -> None:
        self.step = step
        self.changed = changed
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if changed[5:] else "")
        super().__init__(
            f"checkpoint of step {step} discarded: {shown} changed in place while being "
            "copied; the snapshot is retaken at the next step"
        )


@dataclass(frozen=True)
class _Job:
    key: str
    source: torch.Tensor
    target: torch.Tensor
    version: int


class OverlappedCopy:
    """The copy of some live tensors into their snapshot buffers, run by the save's thread.

    Made by the training thread when the save starts; `run` (background) copies, `settle`
    (training thread) waits for the copy and checks it, `ready` (background, before the
    write) waits for `settle` and raises TornSnapshot if any tensor changed.
    """

    def __init__(self, step: int, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> None:
        self.step = step
        self._jobs = [_Job(key, src, dst, src._version) for key, src, dst in pairs]
        self._copy_s = 0.0
        self._enqueued = threading.Event()
        """CPU tensors copied, CUDA copies enqueued on the side streams."""
        self._released = threading.Event()
        self._lock = threading.Lock()
        """Orders the checks against the release: after it, the state may change freely."""
        self._changed: list[str] = []
        self._error: BaseException | None = None
        self._done: list[tuple[torch.device, Any]] = []
        """CUDA: per device, the event recorded after the copies on the side stream."""
        self._after: dict[torch.device, Any] = {}
        """CUDA: per device, the training stream's position when the save started."""
        for job in self._jobs:
            device = job.source.device
            if job.source.is_cuda and device not in self._after:
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(torch.cuda.current_stream(device))
                self._after[device] = event

    @property
    def nbytes(self) -> int:
        return sum(job.target.numel() * job.target.element_size() for job in self._jobs)

    def run(self) -> None:
        """Copy every tensor (in the save's thread); the training thread may go on meanwhile."""
        started_s = time.monotonic()
        try:
            streams: dict[torch.device, Any] = {}
            with torch.no_grad():
                for job in self._jobs:
                    if job.source.is_cuda:
                        self._copy_cuda(job, streams)
                    else:
                        copy_into(job.target, job.source)
            for device, stream in streams.items():
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
                self._done.append((device, event))
        except BaseException as exc:  # raised by ready(), in the same thread, before the write
            self._error = exc
        finally:
            self._enqueued.set()
        try:
            for _device, event in self._done:
                event.synchronize()  # this thread only; training waits on the GPU, if at all
            self._check(release=False)
        except BaseException as exc:  # raised by ready(), in the same thread, before the write
            self._error = exc
        finally:
            self._copy_s = time.monotonic() - started_s

    def _copy_cuda(self, job: _Job, streams: dict[torch.device, Any]) -> None:
        device = job.source.device
        stream = streams.get(device)
        if stream is None:
            stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            stream.wait_event(self._after[device])
            streams[device] = stream
        with torch.cuda.stream(stream):
            job.target.copy_(job.source, non_blocking=True)
            # The training stream may free and reuse the memory while the copy reads it.
            job.source.record_stream(stream)

    def _check(self, *, release: bool) -> None:
        """Record the changed tensors, unless the write was released already (from then on
        the training thread may step the optimizer); `release` releases it."""
        with self._lock:
            if self._released.is_set():
                return
            if not self._changed and self._error is None:
                self._changed = self.changed()
            if release:
                self._released.set()

    @property
    def torn(self) -> bool:
        """Settled, and some tensor changed during its copy: the write will not happen."""
        return self._released.is_set() and bool(self._changed)

    def changed(self) -> list[str]:
        """The tensors whose version counter moved since their copy was scheduled."""
        return [job.key for job in self._jobs if job.source._version != job.version]

    @property
    def copied(self) -> bool:
        """The CPU copies are done and the CUDA ones enqueued (training may go on)."""
        return self._enqueued.is_set()

    def settle(self, *, block: bool) -> bool:
        """Training thread: once the copy is done (waiting for it if `block`), fence it and
        check the versions again, then release the write. False: not done, not blocking.

        On CUDA only the enqueueing is waited for: the training stream then waits for the
        copies' events, so the optimizer's kernels run after them, and a kernel enqueued
        before this point has bumped its counter already."""
        if self._released.is_set():
            return True
        if not block and not self._enqueued.is_set():
            return False
        self._enqueued.wait()
        for device, event in self._done:
            # The optimizer's next kernels wait for the copies on the GPU, not the host.
            torch.cuda.current_stream(device).wait_event(event)
        self._check(release=True)
        return True

    def ready(self) -> None:
        """The save's thread, after `run`, before writing: wait for the training thread to
        settle (or the grace), then raise the copy's failure or TornSnapshot."""
        if not self._released.wait(max(SETTLE_GRACE_S, self._copy_s)):
            # An in-place op that overlapped the end of the copy has ended by now. The copy
            # is complete (on CUDA too), so the training thread needs no fence after this.
            self._check(release=True)
        if self._error is not None:
            raise self._error
        if self._changed:
            raise TornSnapshot(self.step, self._changed)
