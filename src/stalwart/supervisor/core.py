"""The supervisor: the one place that knows all the parts, and its single event loop.

Events come in from the outside world (trainer output, trainer exit, signals,
notify datagrams, deadlines); the pure decisions (classify, restart policy) say
what to do; the shell modules (process, journal, advice) do it. Signal handlers
only record the signal; this loop acts on it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import subprocess
from collections.abc import Callable

from stalwart import paths
from stalwart.channels.control_socket import ControlServer
from stalwart.channels.notify_socket import NotifySocket
from stalwart.errors import UsageError
from stalwart.host import process
from stalwart.host.resources import memory_at_limit, oom_killed_since
from stalwart.host.trainer_process import Trainer
from stalwart.journal import Journal, RunStatus
from stalwart.policy.classify import ExitContext, classify
from stalwart.policy.launcher import node_role
from stalwart.policy.restart import (
    Action,
    Decision,
    State,
)
from stalwart.supervisor.checkpoints import CheckpointMixin
from stalwart.supervisor.commands import ControlMixin
from stalwart.supervisor.drain import DrainMixin
from stalwart.supervisor.keeper import CheckpointKeeper
from stalwart.supervisor.mirroring import RemoteMixin
from stalwart.supervisor.pacing import Pacer
from stalwart.supervisor.reports import NotifyMixin
from stalwart.supervisor.spawning import LaunchMixin
from stalwart.supervisor.state import (
    CHAOS_REASON,
    LOOP_TICK_S,
    STOP_SIGNALS,
    SupervisorState,
    logger,
)
from stalwart.types import Classification, ExitCode, ExitKind, ExitStatus


class Supervisor(
    ControlMixin,
    NotifyMixin,
    CheckpointMixin,
    DrainMixin,
    RemoteMixin,
    LaunchMixin,
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
        self._close_remote()
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
            for deadline in (
                attempt.kill_at_s,
                attempt.abandon_at_s,
                attempt.chaos_at_s,
                attempt.peer_exit_at_s,
            ):
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
        if attempt.peer_exit_at_s is not None and now >= attempt.peer_exit_at_s:
            attempt.peer_exit_at_s = None
            if not attempt.stop_signal_sent:
                logger.info(
                    "%s: the workers left after another node drained the job, but the launcher "
                    "is still waiting for that node (torchrun's exit barrier); stopping it",
                    self.config.name,
                )
                attempt.send_stop(self.config.stop.signum, self.config.stop.grace_s)
        if now >= self._sample_at_s:
            self._sample_at_s = now + self.config.monitor.sample_interval_s
            attempt.record_sample(self._sampler.sample(attempt.pid))
            self._watch_groups(attempt)
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
        rank = attempt.hang.slowest_rank(now_s)
        who = f" from rank {rank} (of {stats.ranks} ranks)" if rank is not None else ""
        logger.error(
            "%s: trainer pid %d is hung: no heartbeat%s for %.1f s (threshold %.1f s; last step "
            "%s, %d heartbeats); collecting stacks, then killing it",
            self.config.name,
            attempt.pid,
            who,
            silence,
            attempt.hang.threshold_s(now_s) or 0.0,
            stats.last_step,
            stats.heartbeats,
        )
        attempt.hang_killed = True
        attempt.dump_stacks(self.dump_dir, self.config.hang.dump_wait_s)

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

    def _resume_from(self) -> str:
        """The newest checkpoint that verifies intact (newer broken ones are quarantined).

        On a directory shared by nodes, an unfinished save may be another node's, still
        running: the trainer's rank 0 removes those once every rank is resuming. Only the
        primary prunes, so only it removes a prune's leftovers.
        """
        assert self.keeper is not None
        single = self.role.nnodes == 1
        decision = self.keeper.prepare_resume(
            remove_staging=single, remove_deleting=self.role.primary
        )
        return decision.env_value

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
        argv = self.trainer_argv()
        try:
            attempt = Trainer(
                number=number,
                argv=argv,
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
            verdict = Classification(ExitKind.USER_ERROR, False, f"cannot start {argv[0]!r}: {exc}")
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
        for pgid in attempt.watched_groups:
            self._sentinel.forget(pgid)
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
            peer_drained=attempt.peer_drained,
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
                decision = self._poison_rule(attempt, status, verdict, decision)
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
