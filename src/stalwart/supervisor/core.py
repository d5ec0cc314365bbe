"""The supervisor: the one place that knows all the parts, and its single event loop.

The loop is the shell around the sans-I/O core (`stalwart.policy.lifecycle.Lifecycle`):
it turns the world (trainer output and exit, signals, notify datagrams, control requests,
posted results of background jobs, time) into the core's events and carries out the
actions the core returns (`actions.py`). Signal handlers only record the signal; the loop
acts on it. A bug that escapes a handler follows the internal-error policy: the trainer
is drained as it would have been, the attempt journaled, and the exit code is 70.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path

from stalwart import paths
from stalwart.channels.control_socket import ControlServer
from stalwart.channels.notify_socket import NotifySocket
from stalwart.checkpoint import tiers
from stalwart.errors import UsageError
from stalwart.host import process
from stalwart.journal import Journal
from stalwart.policy import events as ev
from stalwart.policy.launcher import node_role
from stalwart.supervisor.actions import ActionsMixin
from stalwart.supervisor.checkpoints import CheckpointMixin
from stalwart.supervisor.commands import ControlMixin
from stalwart.supervisor.drain import DrainMixin
from stalwart.supervisor.keeper import CheckpointKeeper
from stalwart.supervisor.mirroring import RemoteMixin
from stalwart.supervisor.pacing import Pacer
from stalwart.supervisor.reports import NotifyMixin
from stalwart.supervisor.state import (
    LOOP_TICK_S,
    STOP_SIGNALS,
    SupervisorState,
    Timer,
    logger,
)
from stalwart.types import ExitCode

MAX_INTERNAL_ERRORS = 3
"""Bugs caught in one run before the loop stops trusting itself (an emergency drain)."""


class Supervisor(
    ActionsMixin,
    ControlMixin,
    NotifyMixin,
    CheckpointMixin,
    DrainMixin,
    RemoteMixin,
    SupervisorState,
):
    """Runs one job until it completes, gives up, is stopped or is preempted."""

    def _setup(self) -> None:
        """Everything that can fail on bad input happens here, before any trainer starts."""
        self._check_command()
        self.role = node_role(self.config.launcher, self.environ)
        paths.ensure_private_dir(self.state_dir)
        self._lock = paths.StateLock(self.state_dir)
        self._lock.acquire()
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create checkpoint dir {self.ckpt_dir}: {exc.strerror or exc}; "
                "fix `checkpoint.dir`"
            ) from None
        self.journal = Journal(self.state_dir / paths.JOURNAL_NAME)
        now_unix = self.clock.wall()
        self.run_record = self.journal.start_run(self.config.name, self.config.command, now_unix)
        interrupted = self.journal.close_interrupted(self.run_record.run_id, now_unix)
        if interrupted:
            logger.warning(
                "%s: %d attempt(s) were cut short by a supervisor that died; recorded as such",
                self.config.name,
                interrupted,
            )
        runtime = paths.ensure_private_dir(
            paths.runtime_dir(self.config.name, self.state_dir, self.environ)
        )
        (self.state_dir / paths.RUNTIME_POINTER).write_text(f"{runtime}\n")
        (self.state_dir / paths.CKPT_DIR_POINTER).write_text(f"{self.ckpt_dir}\n")
        remote_pointer = self.state_dir / paths.REMOTE_POINTER
        if self.config.checkpoint.remote.url:
            remote_pointer.write_text(f"{self.config.checkpoint.remote.url}\n")
        else:
            remote_pointer.unlink(missing_ok=True)
        self.memory_dir = self._open_memory_tier()
        memory_pointer = self.state_dir / paths.MEMORY_DIR_POINTER
        if self.memory_dir is not None:
            memory_pointer.write_text(f"{self.memory_dir}\n")
        else:
            memory_pointer.unlink(missing_ok=True)
        memory = self.config.checkpoint.memory
        self.pacer = Pacer(
            self.config.checkpoint.interval,
            self.journal,
            self.config.name,
            self.run_record.run_id,
            self.clock,
            memory=memory.interval_config(self.config.checkpoint.interval)
            if self.memory_dir is not None
            else None,
            memory_root=self.memory_dir,
            on_memory_interval=self.advice.set_memory_interval,
        )
        self.advice.set_interval(self.pacer.interval_s)
        self.keeper = CheckpointKeeper(
            self.config.checkpoint,
            self.ckpt_dir,
            self.journal,
            self.run_record.run_id,
            self.clock,
            memory_root=self.memory_dir,
        )
        self._replay_poison_history()
        self.advice.publish_to(runtime / "advice.json")
        try:
            self._notify = NotifySocket(runtime / "notify.sock")
        except OSError as exc:
            logger.warning("no notify socket (%s); heartbeats are unavailable", exc)
        else:
            self._selector.register(self._notify.sock, selectors.EVENT_READ, self._on_notify)
            self._notify_listening = True
        try:
            self._control = ControlServer(runtime / "control.sock")
        except OSError as exc:
            logger.warning("no control socket (%s); `stalwart status` reads the journal", exc)
        else:
            self._selector.register(self._control.sock, selectors.EVENT_READ, self._on_control)
        self.observer.start()
        # Set up: from here a journal that fails (disk full, read-only) is logged, not fatal.
        self.journal.survive_failures()

    def _open_memory_tier(self) -> Path | None:
        """The job's memory tier (checkpoint.memory), created; None when off or unusable."""
        memory = self.config.checkpoint.memory
        if not memory.enabled:
            return None
        where = tiers.job_memory_dir(memory.dir, self.config.name, self.state_dir)
        try:
            tiers.create_memory_dir(where)
        except OSError as exc:
            logger.warning(
                "%s: no memory tier: cannot create %s (%s); checkpoints go to disk only; "
                "fix checkpoint.memory.dir",
                self.config.name,
                where,
                exc.strerror or exc,
            )
            return None
        if not tiers.is_tmpfs(where):
            logger.warning(
                "%s: the memory tier %s is not on a tmpfs: its saves cost disk writes",
                self.config.name,
                where,
            )
        logger.info("%s: memory tier in %s", self.config.name, where)
        return where

    def _install_signals(self) -> dict[int, Callable[..., object] | int | None]:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._selector.register(reader, selectors.EVENT_READ, self._on_wakeup)
        previous: dict[int, Callable[..., object] | int | None] = {}
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _on_wakeup(self) -> None:
        assert self._wakeup is not None
        try:
            while self._wakeup[0].recv(4096):
                pass
        except BlockingIOError:
            pass

    def _teardown(self, previous: dict[int, Callable[..., object] | int | None]) -> None:
        """Every cleanup runs, whatever an earlier one raised (each failure is logged)."""
        steps: list[Callable[[], object]] = [self._leave_no_trainer, self.observer.close]
        if self.keeper is not None:
            steps.append(self.keeper.stop_observer)
        steps += [self._close_resume_thread, self._scheduler.shutdown, self._close_remote]
        steps += [self._sampler.close, self._systemd.close]
        if self._control is not None:
            steps.append(self._control.close)
        steps += [lambda: self._restore_signals(previous)]
        if self._notify is not None:
            steps.append(self._notify.close)
        steps.append(self._selector.close)
        if self._sentinel is not None:
            steps.append(self._sentinel.close)
        steps += [lambda: process.set_child_subreaper(False), self._flush_deferred]
        if self.journal is not None:
            steps.append(self.journal.close)
        if self._lock is not None:
            steps.append(self._lock.release)
        for step in steps:
            try:
                step()
            except Exception:
                logger.exception("%s: a cleanup step failed; the others go on", self.config.name)

    def _leave_no_trainer(self) -> None:
        """Only reached when the loop itself failed: never leave a trainer behind (SIGKILL
        only while it runs: a reaped pid may be another process's by now)."""
        attempt = self.attempt
        if attempt is None:
            return
        if attempt.popen.poll() is None:
            attempt.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                attempt.popen.wait(self.config.stop.kill_wait_s)
        attempt.finish_output()
        self.attempt = None

    def _restore_signals(self, previous: dict[int, Callable[..., object] | int | None]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(-1)
        if self._wakeup is not None:
            for sock in self._wakeup:
                sock.close()

    def run(self) -> int:
        """Supervise until done; the return value is the process exit code."""
        previous: dict[int, Callable[..., object] | int | None] = {}
        try:
            self._setup()
            previous = self._install_signals()
            process.set_child_subreaper(True)
            self._sentinel = process.Sentinel()
            self._start_watchers()
            self._start_remote()
            if self.keeper is not None:
                self.keeper.start_observer(self.post)
            self._guarded(lambda: self.feed(ev.Start(self.clock.monotonic())))
            while not self.core.terminal and not self._halted:
                self._guarded(self._turn)
        finally:
            self._teardown(previous)
        if self.final_message:
            level = (
                logging.ERROR
                if self.exit_code in (ExitCode.GAVE_UP, ExitCode.SOFTWARE)
                else (logging.INFO)
            )
            logger.log(level, "%s", self.final_message)
        return int(self.exit_code)

    def _turn(self) -> None:
        self._wait_for_events()
        self._handle_events()
        self._handle_signals()
        self._reap()
        self._handle_deadlines()
        self._flush_deferred()

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step of the loop; a bug in it follows the internal-error policy."""
        try:
            step()
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        """Log it; give the trainer the drain it would have had; exit 70 once it is over."""
        self._internal_errors += 1
        where = "".join(traceback.format_exception(exc)).rstrip()
        logger.error(
            "%s: internal error in the supervisor (a bug, please report it): %s\n%s\n"
            "draining the trainer (advice, %s, grace %g s); exit 70 afterwards, and a restart "
            "resumes from the newest intact checkpoint",
            self.config.name,
            exc,
            where,
            self.config.stop.signal,
            self.config.stop.grace_s,
        )
        if self._internal_errors <= MAX_INTERNAL_ERRORS:
            try:
                self.feed(ev.InternalError(f"{type(exc).__name__}: {exc}", self.clock.monotonic()))
                return
            except Exception as again:
                logger.error("%s: the core failed too (%r)", self.config.name, again)
        self._emergency_drain()

    def _emergency_drain(self) -> None:
        """The loop cannot be trusted any more: drain the trainer by hand, then exit 70."""
        attempt = self.attempt
        with contextlib.suppress(Exception):
            self.advice.drain()
        if attempt is not None:
            with contextlib.suppress(Exception):
                attempt.send_stop(self.config.stop.signum)  # once: it knows if it was sent
            with contextlib.suppress(subprocess.TimeoutExpired):
                attempt.popen.wait(self.config.stop.grace_s)
            with contextlib.suppress(Exception):
                self._leave_no_trainer()
        self.exit_code = ExitCode.SOFTWARE
        self.final_message = (
            f"{self.config.name}: internal errors in the supervisor; the trainer was drained; "
            "exit 70: a restart resumes from the newest intact checkpoint"
        )
        self._halted = True

    def _deadlines(self, now_s: float) -> list[float]:
        """The shell's timers, the core's deadlines, and the hang detector's (it moves with
        every heartbeat, so it is asked, not stored)."""
        deadlines = [d for d in (self.timers.next_s(), self.core.next_deadline_s()) if d]
        attempt = self.attempt
        if attempt is not None and not attempt.hang_killed and self.core.drain is None:
            hang_at = attempt.hang.deadline_s(now_s)
            if hang_at is not None:
                deadlines.append(hang_at)
        return deadlines or [now_s + LOOP_TICK_S]

    def _wait_for_events(self) -> None:
        now = self.clock.monotonic()
        timeout = (
            0.0
            if self._signals or not self._events.empty()
            else min(d - now for d in self._deadlines(now))
        )
        for key, _ in self._selector.select(max(timeout, 0.0)):
            key.data()

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGCHLD:
                self._child_exited = True
            elif signum in STOP_SIGNALS:
                self._on_stop_signal(signum)

    def _handle_deadlines(self) -> None:
        now = self.clock.monotonic()
        for what in self.timers.pop_due(now):
            self._on_timer(what, now)
        attempt = self.attempt
        watching = attempt is not None and not attempt.hang_killed and self.core.drain is None
        if watching and attempt is not None and attempt.hang.is_hung(now):
            self._read_notify()  # a heartbeat may be waiting in the batching pause
            if attempt.hang.is_hung(now):
                self._log_hang(attempt, now)
                self.feed(ev.HangDetected(now))
        self.feed(ev.Tick(now))

    def _on_timer(self, what: Timer, now: float) -> None:
        if what is Timer.REAP:
            self.timers.set(Timer.REAP, now)  # `_reap` re-arms it when it runs
        elif what is Timer.NOTIFY_RESUME:
            self._resume_notify()
        elif what is Timer.WATCHDOG and self._systemd.watchdog_interval_s is not None:
            # Pinged from the loop itself: if the loop wedges, systemd restarts us.
            self._systemd.watchdog()
            self.timers.set(Timer.WATCHDOG, now + self._systemd.watchdog_interval_s)
        elif what is Timer.RESUME_STATUS:
            self._resume_progress(now)
        elif what is Timer.SAMPLE and self.attempt is not None:
            attempt = self.attempt
            self.timers.set(Timer.SAMPLE, now + self.config.monitor.sample_interval_s)
            attempt.record_sample(self._sampler.sample(attempt.pid))
            self._watch_groups(attempt)
            self._systemd.status(self._status_line())

    def request_stop(self, why: str) -> None:
        """A stop request from `why` (a signal name, `stalwart stop`): the core decides."""
        self.feed(ev.StopRequested(why, self.clock.monotonic()))
