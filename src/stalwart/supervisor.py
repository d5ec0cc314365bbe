"""The supervisor: the one place that knows all the parts, and its single event loop.

Events come in from the outside world (trainer output, trainer exit, signals,
notify datagrams, deadlines); the pure decisions (classify, restart policy) say
what to do; the shell modules (process, journal, advice) do it. Signal handlers
only record the signal; this loop acts on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import queue
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from stalwart import paths, process, status_view
from stalwart.advice import AdviceBoard
from stalwart.checkpoint import FormatStatus, QuarantineReason, WriteKind, WriteObserved
from stalwart.classify import ExitContext, classify, compile_rules
from stalwart.clock import Clock, SystemClock
from stalwart.config import JobConfig
from stalwart.control import Connection, ControlServer
from stalwart.errors import UsageError
from stalwart.journal import Journal, RunRecord, RunStatus
from stalwart.keeper import AdoptionDone, CheckpointKeeper, RetentionDone
from stalwart.notify import NotifySocket
from stalwart.pacing import Pacer
from stalwart.preemption import (
    NoticeKind,
    PreemptionNotice,
    Provider,
    ShutdownEvidence,
    Watcher,
    make_watcher,
    probe_shutdown,
    sigterm_meaning,
)
from stalwart.resources import ResourceSampler, memory_at_limit, oom_killed_since
from stalwart.restart import (
    Action,
    Decision,
    PoisonTracker,
    RestartPolicy,
    State,
    StateMachine,
)
from stalwart.scheduling import Scheduler
from stalwart.sdnotify import SystemdNotifier
from stalwart.trainer import Trainer, catches_signal
from stalwart.types import Classification, ExitCode, ExitKind, ExitStatus, signal_name

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOOP_TICK_S = 1.0
"""Upper bound on one wait: deadlines are checked (and children reaped) at least this often."""
CHAOS_REASON = "injected by chaos"
RECOMPUTE_INTERVAL = "recompute-interval"
"""Event posted by the scheduler: time to re-decide the checkpoint interval."""
CLEARED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""systemd's variables are the supervisor's, not the trainer's."""


class Supervisor:
    """Runs one job until it completes, gives up, is stopped or is preempted."""

    def __init__(
        self,
        config: JobConfig,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.environ = dict(os.environ if environ is None else environ)
        self._stdout = stdout or sys.stdout.buffer
        self._stderr = stderr or sys.stderr.buffer
        self.policy = RestartPolicy(config.restart, rng)
        self.machine = StateMachine(config.name)
        self.rules = compile_rules((p.regex, p.kind, p.retryable) for p in config.classify.patterns)
        self.state_dir = paths.state_dir(config.name, config.state_dir, self.environ)
        self.ckpt_dir = (config.checkpoint.dir or self.state_dir / "checkpoints").absolute()
        self.exit_code = ExitCode.OK
        self.final_message = ""
        self.attempt: Trainer | None = None
        self.relaunch_at_s: float | None = None
        self._running_at_s: float | None = None
        self._stop_requests = 0
        self._signals: deque[int] = deque()
        self._selector = selectors.DefaultSelector()
        self.advice = AdviceBoard(config.checkpoint.interval.fixed_interval_s)
        self.pacer: Pacer | None = None
        self.keeper: CheckpointKeeper | None = None
        self._retention_running = False
        self._retention_again = False
        self.poison = PoisonTracker(
            config.restart.poison_after_failures, config.restart.max_rollbacks
        )
        self._chaos_rng = random.Random(config.chaos.seed)
        self._chaos_kills = 0
        # set in run()
        self.journal: Journal | None = None
        self.run_record: RunRecord | None = None
        self._lock: paths.StateLock | None = None
        self._sentinel: process.Sentinel | None = None
        self._notify: NotifySocket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._sampler = ResourceSampler(self.ckpt_dir)
        self._sample_at_s = 0.0
        self._reap_at_s = 0.0
        self._child_exited = False
        self.dump_dir = self.state_dir / "dumps"
        self._control: ControlServer | None = None
        self._notify_listening = False
        self._notify_resume_at_s = 0.0
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._scheduler = Scheduler(self.post)
        self._watcher: Watcher | None = None
        self._preemption: PreemptionNotice | None = None
        self._notices_seen: set[str] = set()
        self.journal_first_attempt = -1
        self._systemd = SystemdNotifier(self.environ)
        self._watchdog_at_s = 0.0

    # setup and teardown

    def _check_command(self) -> None:
        program = self.config.command[0]
        cwd = self.config.cwd or Path.cwd()
        if self.config.cwd is not None and not self.config.cwd.is_dir():
            raise UsageError(f"cwd {self.config.cwd} is not a directory; fix `cwd` in the config")
        if "/" in program:
            resolved = (cwd / program) if not Path(program).is_absolute() else Path(program)
            if not (resolved.is_file() and os.access(resolved, os.X_OK)):
                raise UsageError(f"command not found or not executable: {program}")
            return
        path = {**self.environ, **self.config.env}.get("PATH", os.defpath)
        if shutil.which(program, path=path) is None:
            raise UsageError(f"command not found: {program!r} is not on PATH; check `command`")

    def _setup(self) -> None:
        """Everything that can fail on bad input happens here, before any trainer starts."""
        self._check_command()
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
        self.journal = Journal(self.state_dir / "journal.sqlite")
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
        self.pacer = Pacer(
            self.config.checkpoint.interval,
            self.journal,
            self.config.name,
            self.run_record.run_id,
            self.clock,
        )
        self.advice.set_interval(self.pacer.interval_s)
        self.keeper = CheckpointKeeper(
            self.config.checkpoint, self.ckpt_dir, self.journal, self.run_record.run_id, self.clock
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

    def _start_watchers(self) -> None:
        self._watcher = make_watcher(self.config.preemption)
        if self._watcher is not None:
            watcher = self._watcher
            logger.info(
                "%s: watching for %s preemption notices every %g s",
                self.config.name,
                watcher.provider.value,
                self.config.preemption.poll_interval_s,
            )
            self._scheduler.every(
                "preemption",
                self.config.preemption.poll_interval_s,
                lambda: watcher.poll(self.clock.wall()),
            )
        self._scheduler.every(
            "interval",
            self.config.checkpoint.recompute_every_s,
            lambda: RECOMPUTE_INTERVAL,
            first_s=self.config.checkpoint.recompute_every_s,
        )
        self._scheduler.start()

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
        if self.attempt is not None:
            # Only reached on an internal error: never leave a trainer behind.
            self.attempt.kill(self.config.stop.kill_wait_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.attempt.popen.wait(self.config.stop.kill_wait_s)
            self.attempt.finish_output()
            self.attempt = None
        if self.keeper is not None:
            self.keeper.stop_observer()
        self._scheduler.shutdown()
        self._sampler.close()
        if self._control is not None:
            self._control.close()
        self._systemd.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(-1)
        if self._wakeup is not None:
            for sock in self._wakeup:
                sock.close()
        if self._notify is not None:
            self._notify.close()
        self._selector.close()
        if self._sentinel is not None:
            self._sentinel.close()
        process.set_child_subreaper(False)
        if self.journal is not None:
            self.journal.close()
        if self._lock is not None:
            self._lock.release()

    # the loop

    def run(self) -> int:
        """Supervise until done; the return value is the process exit code."""
        previous: dict[int, Callable[..., object] | int | None] = {}
        try:
            self._setup()
            previous = self._install_signals()
            process.set_child_subreaper(True)
            self._sentinel = process.Sentinel()
            self._start_watchers()
            if self.keeper is not None:
                self.keeper.start_observer(self.post)
            self._launch()
            while not self.machine.terminal:
                self._wait_for_events()
                self._handle_events()
                self._handle_signals()
                self._reap()
                self._handle_deadlines()
        finally:
            self._teardown(previous)
        if self.final_message:
            level = logging.ERROR if self.exit_code == ExitCode.GAVE_UP else logging.INFO
            logger.log(level, "%s", self.final_message)
        return int(self.exit_code)

    def _deadlines(self, now_s: float) -> list[float]:
        deadlines = [self._reap_at_s]
        if self._notify is not None and not self._notify_listening:
            deadlines.append(self._notify_resume_at_s)
        if self._systemd.watchdog_interval_s is not None:
            deadlines.append(self._watchdog_at_s)
        for deadline in (self.relaunch_at_s, self._running_at_s):
            if deadline is not None:
                deadlines.append(deadline)
        attempt = self.attempt
        if attempt is not None:
            deadlines.append(self._sample_at_s)
            for deadline in (attempt.kill_at_s, attempt.abandon_at_s, attempt.chaos_at_s):
                if deadline is not None:
                    deadlines.append(deadline)
            if not attempt.hang_killed and self.machine.state is not State.STOPPING:
                hang_at = attempt.hang.deadline_s(now_s)
                if hang_at is not None:
                    deadlines.append(hang_at)
        return deadlines

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
        self._resume_notify(now)
        if self._systemd.watchdog_interval_s is not None and now >= self._watchdog_at_s:
            # Pinged from the loop itself: if the loop wedges, systemd restarts us.
            self._systemd.watchdog()
            self._watchdog_at_s = now + self._systemd.watchdog_interval_s
        state = self.machine.state
        if state is State.BACKOFF and self.relaunch_at_s is not None and now >= self.relaunch_at_s:
            self.relaunch_at_s = None
            self._launch()
        elif (
            state is State.STARTING and self._running_at_s is not None and now >= self._running_at_s
        ):
            self._running_at_s = None
            self.machine.to(State.RUNNING, f"alive for {self.config.restart.started_after_s:g} s")
        attempt = self.attempt
        if attempt is None:
            return
        if attempt.chaos_at_s is not None and now >= attempt.chaos_at_s:
            attempt.chaos_at_s = None
            if self.machine.state is not State.STOPPING:
                self._chaos_kills += 1
                logger.warning(
                    "%s: chaos: sending %s to trainer pid %d (injected fault %d of at most %d)",
                    self.config.name,
                    self.config.chaos.signal,
                    attempt.pid,
                    self._chaos_kills,
                    self.config.chaos.max_kills,
                )
                attempt.chaos_killed = True
                process.signal_group(attempt.pid, signal.Signals[self.config.chaos.signal])
        if now >= self._sample_at_s:
            self._sample_at_s = now + self.config.monitor.sample_interval_s
            attempt.record_sample(self._sampler.sample(attempt.pid))
            self._systemd.status(self._status_line())
        if (
            not attempt.hang_killed
            and self.machine.state is not State.STOPPING
            and attempt.hang.is_hung(now)
        ):
            self._read_notify()  # a heartbeat may be waiting in the batching pause
            if attempt.hang.is_hung(now):
                self._on_hang(attempt, now)
        if attempt.kill_at_s is not None and now >= attempt.kill_at_s:
            if not attempt.stop_signal_sent and attempt.escalate_grace_s is not None:
                logger.warning(
                    "%s: trainer has not drained by the escalation point; sending %s",
                    self.config.name,
                    self.config.stop.signal,
                )
                attempt.send_stop(self.config.stop.signum, attempt.escalate_grace_s)
                return
            if attempt.stop_signal_sent:
                logger.warning(
                    "%s: trainer pid %d still running %g s after %s; sending SIGKILL to its group",
                    self.config.name,
                    attempt.pid,
                    self.config.stop.grace_s,
                    self.config.stop.signal,
                )
            attempt.kill(self.config.stop.kill_wait_s)
        elif attempt.abandon_at_s is not None and now >= attempt.abandon_at_s:
            logger.error(
                "%s: trainer pid %d survived SIGKILL for %g s (uninterruptible I/O?); "
                "giving up on it",
                self.config.name,
                attempt.pid,
                self.config.stop.kill_wait_s,
            )
            attempt.finish_output()
            self.attempt = None
            verdict = Classification(
                ExitKind.HANG if attempt.hang_killed else ExitKind.UNKNOWN,
                True,
                f"pid {attempt.pid} could not be reaped after SIGKILL",
            )
            if self._stop_requests:
                verdict = Classification(ExitKind.STOPPED, False, verdict.reason)
            self._conclude(attempt.number, None, verdict, attempt.uptime_s(), attempt)

    def _on_hang(self, attempt: Trainer, now_s: float) -> None:
        silence = attempt.hang.silence_s(now_s) or 0.0
        stats = attempt.hang.stats(now_s)
        logger.error(
            "%s: trainer pid %d is hung: no heartbeat for %.1f s (threshold %.1f s; last step %s, "
            "%d heartbeats); collecting stacks, then killing it",
            self.config.name,
            attempt.pid,
            silence,
            attempt.hang.threshold_s(now_s) or 0.0,
            stats.last_step,
            stats.heartbeats,
        )
        attempt.hang_killed = True
        attempt.dump_stacks(self.dump_dir, self.config.hang.dump_wait_s)

    # control and status

    def _on_control(self) -> None:
        assert self._control is not None
        connection = self._control.accept()
        if connection is not None:
            self._selector.register(
                connection.sock,
                selectors.EVENT_READ,
                functools.partial(self._on_control_request, connection),
            )

    def _on_control_request(self, connection: Connection) -> None:
        try:
            request = connection.read_request()
        except (ValueError, EOFError) as exc:
            self._selector.unregister(connection.sock)
            connection.respond({"ok": False, "error": str(exc) or "connection closed"})
            return
        if request is None:
            return
        self._selector.unregister(connection.sock)
        if not connection.allowed:
            connection.respond(
                {"ok": False, "error": f"permission denied for uid {connection.uid}"}
            )
            return
        command = request["cmd"]
        if command == "stop":
            self.request_stop("`stalwart stop`")
        elif command == "checkpoint":
            self.checkpoint_now("`stalwart checkpoint`")
        connection.respond(self.status())

    def checkpoint_now(self, why: str) -> None:
        """Ask for a checkpoint at the next step boundary (advice counter; SIGUSR1 if caught)."""
        self.advice.request_checkpoint()
        attempt = self.attempt
        if attempt is not None and catches_signal(attempt.pid, signal.SIGUSR1):
            os.kill(attempt.pid, signal.SIGUSR1)
        logger.info("%s: %s: checkpoint requested", self.config.name, why)

    def _status_line(self) -> str:
        attempt = self.attempt
        if attempt is None:
            return f"{self.machine.state.value}"
        stats = attempt.hang.stats(self.clock.monotonic())
        step = f", step {stats.last_step}" if stats.last_step is not None else ""
        return (
            f"{self.machine.state.value}: attempt {attempt.number}, pid {attempt.pid}{step}, "
            f"interval {self.advice.advice.interval_s:g} s"
        )

    def status(self) -> dict[str, object]:
        """What `stalwart status` shows, as plain JSON-able data."""
        return status_view.running_snapshot(self)

    # stopping

    def _on_stop_signal(self, signum: int) -> None:
        why = signal_name(signum)
        if signum == signal.SIGTERM and self._preemption is None:
            meaning = sigterm_meaning(
                sigterm_is_preemption=self.config.preemption.sigterm_is_preemption,
                evidence=probe_shutdown()
                if self.config.preemption.sigterm_is_preemption
                else ShutdownEvidence.UNKNOWN,
            )
            if meaning is ExitKind.PREEMPTED:
                self._on_preemption(
                    PreemptionNotice(
                        provider=Provider.SIGNAL,
                        kind=NoticeKind.TERMINATE,
                        deadline_unix=None,
                        detail="SIGTERM while the machine shuts down",
                        event_id="sigterm",
                    )
                )
                return
        if self._preemption is not None and self._stop_requests == 0 and self.attempt is not None:
            # Already draining for a preemption: a further signal escalates, like a second Ctrl-C.
            self._stop_requests = 1
        self.request_stop(why)

    def request_stop(self, why: str) -> None:
        """First request: graceful stop. Any later one: kill now."""
        self._stop_requests += 1
        state = self.machine.state
        if self._stop_requests == 1:
            self.advice.drain()
        if state is State.BACKOFF:
            self.relaunch_at_s = None
            self.exit_code = ExitCode.OK
            self.final_message = f"{self.config.name}: stopped on {why} during backoff"
            self.machine.to(State.EXITED, f"{why} during backoff")
            return
        attempt = self.attempt
        if attempt is None:
            return
        if self._stop_requests == 1:
            logger.info(
                "%s: %s: asking the trainer to stop (%s, grace %g s); repeat to kill it now",
                self.config.name,
                why,
                self.config.stop.signal,
                self.config.stop.grace_s,
            )
            attempt.send_stop(self.config.stop.signum, self.config.stop.grace_s)
            self._running_at_s = None
            self.machine.to(State.STOPPING, why)
            self._systemd.stopping(f"stopping: {why}")
            self._systemd.extend_timeout(
                self.config.stop.grace_s + self.config.stop.kill_wait_s + 5.0
            )
        elif not attempt.killed:
            logger.warning("%s: %s again: killing the trainer now", self.config.name, why)
            attempt.kill(self.config.stop.kill_wait_s)

    # checkpoints

    def _replay_poison_history(self) -> None:
        """After a supervisor restart: the crash-loop streak continues where it was."""
        assert self.journal is not None
        assert self.run_record is not None
        run_id = self.run_record.run_id
        produced = {
            c.attempt for c in self.journal.checkpoints(self.config.name) if c.run_id == run_id
        }
        for past in self.journal.attempts(run_id):
            if past.kind is None or (past.reason or "").startswith(CHAOS_REASON):
                continue
            resumed = Path(past.resume_from).name if past.resume_from else None
            self.poison.on_attempt_end(resumed, past.attempt in produced, ExitKind(past.kind))

    def _poison_rule(
        self, attempt: Trainer, verdict: Classification, decision: Decision
    ) -> Decision:
        """Crash-loop rollback: quarantine a checkpoint that every resume dies on."""
        if attempt.chaos_killed:
            return decision  # an injected kill says nothing about the checkpoint
        resumed = Path(attempt.resume_from).name if attempt.resume_from else None
        poison = self.poison.on_attempt_end(resumed, attempt.produced_checkpoint, verdict.kind)
        if poison.give_up is not None:
            return Decision(Action.GIVE_UP, 0.0, poison.give_up)
        if poison.rollback is None or self.keeper is None:
            return decision
        moved = self.keeper.quarantine(
            poison.rollback,
            QuarantineReason.POISON,
            f"{self.config.restart.poison_after_failures} failures in a row after resuming "
            f"from it, no newer checkpoint; last: {verdict.reason}",
        )
        logger.error(
            "%s: checkpoint %s is poison: every attempt resuming from it failed; "
            "quarantined as %s, rolling back to the previous intact checkpoint",
            self.config.name,
            poison.rollback,
            moved,
        )
        return dataclasses.replace(
            decision,
            reason=f"rolled back from poison checkpoint {poison.rollback}; {decision.reason}",
        )

    def _after_save(self, size_bytes: int | None) -> None:
        """A new checkpoint exists: prune old ones in the background, one pass at a time."""
        keeper = self.keeper
        if keeper is None:
            return
        if self._retention_running:
            self._retention_again = True
            return
        self._retention_running = True
        self._retention_again = False
        journal_path = self.state_dir / "journal.sqlite"
        self._scheduler.submit("retention", lambda: keeper.retain(journal_path, size_bytes))

    def _on_observed_write(self, event: WriteObserved) -> None:
        """A checkpoint write seen by the directory watcher (foreign, or ours unreported)."""
        attempt = self.attempt
        keeper = self.keeper
        if attempt is None or keeper is None or self.pacer is None:
            return
        foreign = event.kind is WriteKind.FOREIGN
        valid = event.format is not None and event.format.status is FormatStatus.VALID
        logger.info(
            "%s: observed %s checkpoint %s: %d bytes written in %.2f s%s",
            self.config.name,
            event.kind.value,
            event.name,
            event.size_bytes,
            event.duration_s,
            f" ({event.format.reason})" if event.format is not None else "",
        )
        if not attempt.reported_saves and (valid or not foreign):
            # A trainer that does not report its saves: the write time is its cost.
            decision = self.pacer.on_save(
                attempt=attempt.number,
                step=None,
                path=str(event.path),
                size_bytes=event.size_bytes,
                stall_s=event.duration_s,
                persist_s=event.duration_s,
                source="observed",
                running_exposure_s=attempt.uptime_s(),
            )
            self.advice.set_interval(decision.interval_s)
        if valid or not foreign:
            attempt.produced_checkpoint = True
        if foreign and valid and self.config.checkpoint.adopt_foreign:
            run_id, number = self.run_record.run_id if self.run_record else "", attempt.number
            self._scheduler.submit(
                f"adopt:{event.name}", lambda: keeper.adopt(event, run_id, number)
            )
        self._after_save(event.size_bytes)

    def _on_retention(self, done: RetentionDone) -> None:
        self._retention_running = False
        if self._retention_again:
            self._after_save(None)
        for path in done.deleted:
            logger.info("%s: pruned checkpoint %s", self.config.name, path.name)
        if done.plan is not None and done.plan.short_bytes > 0:
            logger.warning(
                "%s: %d more bytes are needed in %s and nothing more can be pruned; "
                "the next save may fail (free space or lower checkpoint.keep_last)",
                self.config.name,
                done.plan.short_bytes,
                self.ckpt_dir,
            )

    # preemption

    def post(self, event: object) -> None:
        """From any thread: hand an event to the loop and wake it."""
        self._events.put(event)
        if self._wakeup is not None:
            with contextlib.suppress(OSError):
                self._wakeup[1].send(b"\0")

    def _handle_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, PreemptionNotice):
                self._on_preemption(event)
            elif isinstance(event, WriteObserved):
                self._on_observed_write(event)
            elif isinstance(event, RetentionDone):
                self._on_retention(event)
            elif isinstance(event, AdoptionDone):
                log = logger.info if event.ok else logger.warning
                log("%s: adopting %s: %s", self.config.name, event.name, event.detail)
            elif event is RECOMPUTE_INTERVAL and self.pacer is not None:
                running_s = self.attempt.uptime_s() if self.attempt is not None else 0.0
                self.advice.set_interval(self.pacer.recompute(running_s).interval_s)

    def _on_preemption(self, notice: PreemptionNotice) -> None:
        """A notice: emergency checkpoint, and for a binding one a drain before the deadline."""
        now_unix, now_s = self.clock.wall(), self.clock.monotonic()
        if notice.event_id in self._notices_seen:
            return
        self._notices_seen.add(notice.event_id)
        remaining = notice.remaining_s(now_unix)
        logger.warning(
            "%s: %s %s notice (%s)%s",
            self.config.name,
            notice.provider.value,
            notice.kind.value,
            notice.detail,
            f", {remaining:.0f} s left" if remaining is not None else "",
        )
        if notice.advisory:
            self.checkpoint_now(f"{notice.provider.value} {notice.kind.value} recommendation")
            return
        if self._preemption is not None or self.machine.terminal:
            return
        self._preemption = notice
        self.advice.drain(checkpoint=True, deadline_unix=notice.deadline_unix)
        if self.machine.state is State.BACKOFF:
            self.relaunch_at_s = None
            self._finish_preempted(None)
            return
        attempt = self.attempt
        if attempt is None:
            return
        margin_s = self.config.preemption.drain_margin_s
        if notice.deadline_unix is not None:
            escalate_s = now_s + max(notice.deadline_unix - now_unix - margin_s, 0.0)
        else:
            escalate_s = now_s + self.config.stop.grace_s
        if attempt.hang.armed:
            # A client-instrumented trainer drains itself from the advice file; the stop
            # signal follows at the escalation point, SIGKILL half a margin later.
            attempt.kill_at_s = escalate_s
            attempt.escalate_grace_s = margin_s / 2
        else:
            attempt.send_stop(self.config.stop.signum, max(escalate_s - now_s, 0.0))
        self._running_at_s = None
        self.machine.to(State.STOPPING, f"preempted ({notice.provider.value})")
        self._systemd.stopping(f"preempted: {notice.detail}")
        self._systemd.extend_timeout(max(escalate_s - now_s, 0.0) + margin_s + 5.0)

    def _finish_preempted(self, number: int | None) -> None:
        assert self._preemption is not None
        notice = self._preemption
        if self._watcher is not None and notice.provider is not Provider.SIGNAL:
            acknowledged = self._watcher.acknowledge(notice)
            if acknowledged:
                logger.info(
                    "%s: acknowledged %s event %s",
                    self.config.name,
                    notice.provider.value,
                    notice.event_id,
                )
        deadline = notice.remaining_s(self.clock.wall())
        timing = (
            f"{deadline:.1f} s before the deadline"
            if deadline is not None and deadline >= 0
            else "after the deadline"
            if deadline is not None
            else "(no deadline given)"
        )
        after = f"after attempt {number} drained " if number is not None else ""
        self.exit_code = ExitCode.PREEMPTED
        self.final_message = (
            f"{self.config.name}: machine preempted ({notice.detail}); stopped {after}{timing}; "
            "the next start resumes from the newest intact checkpoint"
        )
        self.machine.to(State.EXITED, "preempted")

    # launching

    def _resume_from(self) -> str:
        """The newest checkpoint that verifies intact (newer broken ones are quarantined)."""
        assert self.keeper is not None
        return self.keeper.prepare_resume().env_value

    def trainer_env(self, attempt: int, resume_from: str) -> dict[str, str]:
        assert self.run_record is not None
        env = {**self.environ, **self.config.env}
        for name in CLEARED_ENV:
            env.pop(name, None)
        # A pipe makes Python block-buffer stdout: lines would arrive late and die with a crash.
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(
            STALWART_RUN_ID=self.run_record.run_id,
            STALWART_ATTEMPT=str(attempt),
            STALWART_CKPT_DIR=str(self.ckpt_dir),
            STALWART_RESUME_FROM=resume_from,
            STALWART_ADVICE_FILE=str(self.advice.path or ""),
            STALWART_NOTIFY_SOCKET=str(self._notify.path) if self._notify else "",
            STALWART_DUMP_DIR=str(self.dump_dir),
        )
        return env

    def _launch(self) -> None:
        assert self.journal is not None
        assert self.run_record is not None
        run_id = self.run_record.run_id
        number = self.journal.next_attempt(run_id)
        if self.journal_first_attempt < 0:
            self.journal_first_attempt = number
        resume_from = self._resume_from()
        now_s = self.clock.monotonic()
        self.machine.to(State.STARTING, f"attempt {number}")
        prefix = f"[{self.config.name}#{number}] ".encode() if self.config.output.prefix else b""
        try:
            attempt = Trainer(
                number=number,
                argv=self.config.command,
                env=self.trainer_env(number, resume_from),
                cwd=self.config.cwd,
                resume_from=resume_from,
                selector=self._selector,
                sinks=(self._stdout, self._stderr),
                prefix=prefix,
                tail_lines=self.config.output.tail_lines,
                hang=self.config.hang,
                clock=self.clock,
            )
        except OSError as exc:
            self.journal.start_attempt(run_id, number, None, self.clock.wall(), resume_from)
            verdict = Classification(
                ExitKind.USER_ERROR, False, f"cannot start {self.config.command[0]!r}: {exc}"
            )
            self._conclude(number, None, verdict, 0.0)
            return
        assert self._sentinel is not None
        self._sentinel.watch(attempt.pid)
        self.attempt = attempt
        self.journal.start_attempt(run_id, number, attempt.pid, self.clock.wall(), resume_from)
        logger.info(
            "%s: attempt %d started: pid %d%s",
            self.config.name,
            number,
            attempt.pid,
            f", resuming from {resume_from}" if resume_from else "",
        )
        self._running_at_s = now_s + self.config.restart.started_after_s
        if number == self.journal_first_attempt:
            self._systemd.ready(self._status_line())
        else:
            self._systemd.status(self._status_line())
        self._sample_at_s = now_s  # a baseline sample right away (OOM evidence needs one)
        chaos = self.config.chaos
        if chaos.enabled and self._chaos_kills < chaos.max_kills:
            attempt.chaos_at_s = now_s + self._chaos_rng.uniform(
                chaos.kill_after_min_s, chaos.kill_after_max_s
            )

    # trainer events

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
            self._notify_resume_at_s = self.clock.monotonic() + batch_s
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

    def _resume_notify(self, now_s: float) -> None:
        if self._notify is None or self._notify_listening or now_s < self._notify_resume_at_s:
            return
        self._selector.register(self._notify.sock, selectors.EVENT_READ, self._on_notify)
        self._notify_listening = True

    def _on_message(
        self, attempt: Trainer, fields: dict[str, int | float | str], now_s: float
    ) -> None:
        step = fields.get("STEP")
        if isinstance(step, int):
            if attempt.ready_s is None:
                self._on_first_step(attempt, now_s - attempt.started_s)
            attempt.hang.heartbeat(now_s, step)
        elif "READY" in fields:
            attempt.hang.heartbeat(now_s)
        begin = fields.get("CKPT_BEGIN")
        if isinstance(begin, int):
            attempt.ckpt_step = begin
            attempt.hang.checkpoint_begin(now_s)
        if "CKPT_DONE" in fields or "CKPT_STALL_S" in fields or "CKPT_PERSIST_S" in fields:
            attempt.hang.checkpoint_end(now_s)
            self._on_save_report(attempt, fields)
        if "DONE" in fields:
            attempt.done_reported = True
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
        step = attempt.ckpt_step if attempt.ckpt_step is not None else attempt.hang.last_step
        decision = self.pacer.on_save(
            attempt=attempt.number,
            step=step,
            path=str(done) if done is not None else None,
            size_bytes=size if isinstance(size, int) else None,
            stall_s=number("CKPT_STALL_S"),
            persist_s=number("CKPT_PERSIST_S"),
            source="trainer",
            running_exposure_s=attempt.uptime_s(),
        )
        attempt.ckpt_step = None
        attempt.reported_saves = True
        attempt.produced_checkpoint = True
        self.advice.set_interval(decision.interval_s)
        self._after_save(size if isinstance(size, int) else None)

    def _reap(self) -> None:
        """Reap on SIGCHLD, and once a tick in case a signal was coalesced away."""
        now_s = self.clock.monotonic()
        if not self._child_exited and now_s < self._reap_at_s:
            return
        self._child_exited = False
        self._reap_at_s = now_s + LOOP_TICK_S
        attempt = self.attempt
        known = {attempt.pid: attempt.popen} if attempt else {}
        exited = process.reap_exited(known)
        if attempt is not None and attempt.pid in exited:
            self._on_trainer_exit(attempt)

    def _on_trainer_exit(self, attempt: Trainer) -> None:
        assert attempt.popen.returncode is not None
        assert self._sentinel is not None
        uptime_s = attempt.uptime_s()
        # Everything it sent before dying is queued on the socket: it belongs to this attempt.
        self._read_notify()
        # The leader is gone; whatever it left in its group or orphaned to us goes too.
        process.signal_group(attempt.pid, signal.SIGKILL)
        process.kill_orphans({self._sentinel.pid})
        attempt.finish_output()
        self._sentinel.forget(attempt.pid)
        self.attempt = None
        self._running_at_s = None
        status = ExitStatus.from_returncode(attempt.popen.returncode)
        context = ExitContext(
            attempt=attempt.number,
            uptime_s=uptime_s,
            stop_requested=self._stop_requests > 0 and self._preemption is None,
            hang_killed=attempt.hang_killed,
            preemption_pending=self._preemption is not None,
            done_reported=attempt.done_reported,
            memory_at_limit=memory_at_limit(
                attempt.last_sample, self.config.monitor.memory_limit_fraction
            )
            or oom_killed_since(attempt.first_sample, self._sampler.sample(None)),
        )
        verdict = classify(
            status,
            list(attempt.tail),
            context,
            rules=self.rules,
            non_retryable_exit_codes=frozenset(self.config.classify.non_retryable_exit_codes),
        )
        assert self.journal is not None
        assert self.run_record is not None
        self.journal.set_attempt_progress(
            self.run_record.run_id,
            attempt.number,
            last_step=attempt.hang.last_step,
            peak_rss_bytes=attempt.peak_rss_bytes or None,
        )
        if attempt.chaos_killed and verdict.kind.is_failure:
            verdict = Classification(
                verdict.kind, True, f"{CHAOS_REASON} ({status.describe()}); spends no budget"
            )
        self._conclude(attempt.number, status, verdict, uptime_s, attempt)

    def _conclude(
        self,
        number: int,
        status: ExitStatus | None,
        verdict: Classification,
        uptime_s: float,
        attempt: Trainer | None = None,
    ) -> None:
        """Record the attempt's end and act on the restart policy's decision."""
        assert self.journal is not None
        assert self.run_record is not None
        name = self.config.name
        if verdict.kind is ExitKind.STOPPED or (
            verdict.kind is ExitKind.PREEMPTED and self._preemption is not None
        ):
            decision = Decision(Action.FINISH, 0.0, verdict.reason)
        else:
            decision = self.policy.on_exit(
                self.clock.monotonic(),
                verdict,
                uptime_s,
                spend_budget=not (attempt is not None and attempt.chaos_killed),
            )
            if decision.action is not Action.FINISH and attempt is not None:
                decision = self._poison_rule(attempt, verdict, decision)
        described = status.describe() if status else "did not start"
        if self.pacer is not None:
            self.advice.set_interval(self.pacer.on_attempt_end(uptime_s, verdict.kind).interval_s)
        self.journal.end_attempt(
            self.run_record.run_id,
            number,
            now_unix=self.clock.wall(),
            status=status,
            verdict=verdict,
            uptime_s=uptime_s,
            decision=f"{decision.action.value}: {decision.reason}",
        )
        logger.info(
            "%s: attempt %d ended after %.1f s: %s -> %s (%s)",
            name,
            number,
            uptime_s,
            described,
            verdict.kind.value,
            "retryable" if verdict.retryable else "not retryable",
        )
        if decision.action is Action.RESTART:
            logger.info("%s: relaunching in %.2f s (%s)", name, decision.delay_s, decision.reason)
            self.relaunch_at_s = self.clock.monotonic() + decision.delay_s
            self.machine.to(State.BACKOFF, f"restart in {decision.delay_s:.2f} s")
        elif decision.action is Action.FINISH and verdict.kind is ExitKind.PREEMPTED:
            self._finish_preempted(number)
        elif decision.action is Action.FINISH:
            self.exit_code = ExitCode.OK
            if verdict.kind is ExitKind.COMPLETED:
                self.journal.end_run(self.run_record.run_id, RunStatus.COMPLETED, self.clock.wall())
                self.final_message = f"{name}: training finished after {number + 1} attempt(s)"
            else:
                self.final_message = f"{name}: stopped on request; `stalwart run` again resumes"
            self.machine.to(State.EXITED, verdict.kind.value)
        else:
            self.exit_code = ExitCode.GAVE_UP
            self.journal.end_run(self.run_record.run_id, RunStatus.GAVE_UP, self.clock.wall())
            self.final_message = (
                f"{name}: gave up after attempt {number}: {decision.reason}. "
                f"See `stalwart history {name}`; fix the cause, then run again."
            )
            self.machine.to(State.FATAL, decision.reason)
