"""Datagrams from the trainer: heartbeats, progress and save reports."""

from __future__ import annotations

import selectors

from stalwart.host.trainer_process import Trainer
from stalwart.policy import events as ev
from stalwart.supervisor.pacing import MEMORY_SOURCE
from stalwart.supervisor.state import (
    SupervisorState,
    Timer,
)


class NotifyMixin(SupervisorState):
    """Reads the notify socket in batches and turns datagrams into progress and save reports."""

    def _on_notify(self) -> None:
        """Read every waiting datagram, then stop listening for `notify_batch_s`.

        A trainer may heartbeat at 100 Hz; waking for each datagram would cost the
        supervisor more CPU than everything else it does. Kernel receive timestamps
        keep the heartbeat times exact while the loop reads them in batches.
        """
        assert self._notify is not None
        batch_s = self.config.monitor.notify_batch_s
        if batch_s > 0 and self._notify_listening:
            self._selector.unregister(self._notify.sock)
            self._notify_listening = False
            self.timers.set(Timer.NOTIFY_RESUME, self.clock.monotonic() + batch_s)
        self._read_notify()

    def _read_notify(self) -> None:
        if self._notify is None:
            return
        now_s, now_unix = self.clock.monotonic(), self.clock.wall()
        for message in self._notify.receive():
            attempt = self.attempt
            if attempt is None:
                continue
            at_s = now_s
            if message.received_unix is not None:
                at_s = min(now_s, now_s - (now_unix - message.received_unix))
            self._on_message(attempt, message.fields, at_s)

    def _resume_notify(self) -> None:
        if self._notify is None or self._notify_listening:
            return
        self._selector.register(self._notify.sock, selectors.EVENT_READ, self._on_notify)
        self._notify_listening = True

    def _on_message(
        self, attempt: Trainer, fields: dict[str, int | float | str], now_s: float
    ) -> None:
        # torchrun's workers each say which rank they are; no RANK is one implicit rank.
        raw_rank = fields.get("RANK")
        rank = raw_rank if isinstance(raw_rank, int) else None
        if rank is not None and not attempt.hang.has_rank(rank):
            self._watch_groups(attempt)  # a new worker: its group dies with the supervisor
        step = fields.get("STEP")
        if isinstance(step, int):
            if attempt.ready_s is None:
                self._on_first_step(attempt, now_s - attempt.started_s)
            attempt.hang.heartbeat(now_s, step, rank)
            self.observer.heartbeat(step, now_s)
        elif "READY" in fields and rank is not None:
            attempt.hang.rank_started(now_s, rank)
        elif "READY" in fields:
            attempt.hang.heartbeat(now_s)
        loss = fields.get("LOSS")
        if isinstance(loss, float):
            self._on_loss(attempt, step if isinstance(step, int) else None, loss, now_s)
        begin = fields.get("CKPT_BEGIN")
        if isinstance(begin, int):
            attempt.ckpt_step = begin
            attempt.hang.checkpoint_begin(now_s, rank)
        # One rank (LOCAL_RANK 0) reports a save for its node: that ends it for every rank.
        if "CKPT_DONE" in fields or "CKPT_STALL_S" in fields or "CKPT_PERSIST_S" in fields:
            attempt.hang.checkpoint_end(now_s, rank)
            self._on_save_report(attempt, fields)
        if "DONE" in fields:
            attempt.done_reported = True
        if "PEER_DRAIN" in fields and not attempt.peer_drained:
            attempt.peer_drained = True
            self.feed(ev.PeerDrained(now_s))
        status = fields.get("STATUS")
        if isinstance(status, str):
            attempt.status_text = status

    def _on_first_step(self, attempt: Trainer, ready_s: float) -> None:
        """Launch to first step: the restart cost R of the interval model."""
        assert self.journal is not None
        assert self.run_record is not None
        assert self.pacer is not None
        attempt.ready_s = ready_s
        self.journal.set_attempt_progress(self.run_record.run_id, attempt.number, ready_s=ready_s)
        self.advice.set_interval(self.pacer.on_restart(ready_s).interval_s)

    def _on_save_report(self, attempt: Trainer, fields: dict[str, int | float | str]) -> None:
        assert self.pacer is not None

        def number(key: str) -> float | None:
            value = fields.get(key)
            return float(value) if isinstance(value, int | float) else None

        done = fields.get("CKPT_DONE")
        size = fields.get("CKPT_BYTES")
        in_memory = fields.get("CKPT_TIER") == "memory" and self.memory_dir is not None
        step = attempt.ckpt_step if attempt.ckpt_step is not None else attempt.hang.last_step
        decision = self.pacer.on_save(
            attempt=attempt.number,
            step=step,
            path=str(done) if done is not None else None,
            size_bytes=size if isinstance(size, int) else None,
            stall_s=number("CKPT_STALL_S"),
            persist_s=number("CKPT_PERSIST_S"),
            source=MEMORY_SOURCE if in_memory else "trainer",
            running_exposure_s=attempt.uptime_s(),
        )
        attempt.reported_saves = True
        attempt.produced_checkpoint = True
        self.observer.saved(
            attempt.number,
            step=step,
            path=str(done) if done is not None else None,
            size_bytes=size if isinstance(size, int) else None,
            stall_s=number("CKPT_STALL_S"),
            persist_s=number("CKPT_PERSIST_S"),
        )
        self.advice.set_interval(decision.interval_s)
        if in_memory:
            self.memory_saved_attempts.add(attempt.number)
            return  # the same save's disk report (if any) follows; it keeps the step
        attempt.ckpt_step = None
        self._after_save(size if isinstance(size, int) else None)
        self._upload(str(done) if done is not None else None)
