"""The supervisor's state: every attribute the parts of the loop share, set in one place.

The supervisor is one class assembled from mixins, one per concern (control requests,
notify datagrams, checkpoints, draining and preemption, the loop itself); each mixin
sees the whole state through this base. Methods one mixin calls in another are
declared here.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import random
import selectors
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from stalwart import paths
from stalwart.channels.advice_file import AdviceBoard
from stalwart.channels.control_socket import ControlServer
from stalwart.channels.notify_socket import NotifySocket
from stalwart.channels.systemd_notify import SystemdNotifier
from stalwart.checkpoint import WriteObserved
from stalwart.clock import Clock, SystemClock
from stalwart.config import JobConfig
from stalwart.host import process
from stalwart.host.resources import ResourceSampler
from stalwart.host.scheduler import Scheduler
from stalwart.host.trainer_process import Trainer
from stalwart.host.worker import Worker
from stalwart.journal import Journal, RunRecord
from stalwart.policy.bookkeeping import CoreSettings
from stalwart.policy.classify import compile_rules
from stalwart.policy.deadlines import Deadlines, Due
from stalwart.policy.divergence import Divergence, DivergenceRollbacks, LossMonitor
from stalwart.policy.events import Event
from stalwart.policy.launcher import NodeRole
from stalwart.policy.lifecycle import Lifecycle
from stalwart.policy.restart import (
    Decision,
    PoisonTracker,
    RestartPolicy,
    StateMachine,
)
from stalwart.preemption import (
    PreemptionNotice,
    Watcher,
)
from stalwart.remote import RemoteMirror, UploadResult
from stalwart.supervisor.keeper import CheckpointKeeper, RetentionDone
from stalwart.supervisor.observing import LoopObserver
from stalwart.supervisor.pacing import Pacer
from stalwart.types import Classification, ExitCode, ExitKind, ExitStatus

logger = logging.getLogger("stalwart.supervisor")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOOP_TICK_S = 1.0
"""Upper bound on one wait: deadlines are checked (and children reaped) at least this often."""
CHAOS_REASON = "injected by chaos"
RECOMPUTE_INTERVAL = "recompute-interval"
"""Event posted by the scheduler: time to re-decide the checkpoint interval."""
CLEARED_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "STALWART_MEMORY_DIR",
    "STALWART_MEMORY_FRACTION",
)
"""systemd's variables are the supervisor's, not the trainer's; an inherited memory tier is
not this job's (it is set again when this job keeps one)."""


class Timer(enum.Enum):
    """The shell's own deadlines (the core keeps the lifecycle's), in one registry."""

    REAP = "reap"
    """Reap once a tick even without SIGCHLD (signals coalesce)."""
    NOTIFY_RESUME = "notify resume"
    """Listen to the notify socket again after a batching pause."""
    WATCHDOG = "watchdog"
    SAMPLE = "sample"
    """Sample the trainer's process tree and resources."""
    RESUME_STATUS = "resume status"
    """While the resume checkpoint verifies: STATUS and EXTEND_TIMEOUT to systemd."""


class SupervisorState:
    """All of the supervisor's state; the mixins hold the behaviour."""

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
        self.rules = compile_rules((p.regex, p.kind, p.retryable) for p in config.classify.patterns)
        self.state_dir = paths.state_dir(config.name, config.state_dir, self.environ)
        self.ckpt_dir = (config.checkpoint.dir or self.state_dir / "checkpoints").absolute()
        self.exit_code = ExitCode.OK
        self.final_message = ""
        self.attempt: Trainer | None = None
        self._ended_attempt: Trainer | None = None
        self._ended_status: ExitStatus | None = None
        """The attempt that just ended, until its end is concluded (the decision needs it)."""
        self._resume = ""
        """The prepared resume point of the next attempt (STALWART_RESUME_FROM)."""
        self._resume_pending_since_s: float | None = None
        self._internal_errors = 0
        self._halted = False
        self._deferred: list[Callable[[], None]] = []
        self._resume_pool = Worker("stalwart-resume")
        """Where the resume checkpoint is chosen and verified, off the loop."""
        self._resume_journal: Journal | None = None
        """That thread's own journal connection (SQLite objects stay in their thread)."""
        """Journal writes that a relaunch does not wait for: done at the end of the turn."""
        self._signals: deque[int] = deque()
        self._selector = selectors.DefaultSelector()
        self.advice = AdviceBoard(config.checkpoint.interval.fixed_interval_s)
        self.pacer: Pacer | None = None
        self.keeper: CheckpointKeeper | None = None
        self.memory_dir: Path | None = None
        """This job's memory tier (checkpoint.memory), when kept."""
        self.memory_saved_attempts: set[int] = set()
        """Attempts that committed a checkpoint to the memory tier."""
        self.tier_evidence: ExitKind | None = None
        """The failure kind of an attempt that wrote to the memory tier: the next resume
        tells whether the tier survived it (Pacer.on_relaunch)."""
        self._retention_running = False
        self._retention_again = False
        self.poison = PoisonTracker(
            config.restart.poison_after_failures, config.restart.max_rollbacks
        )
        self.losses = LossMonitor(config.divergence)
        """The trainer's `LOSS=` reports, judged for NaN and spikes (one per run)."""
        self.divergence_rollbacks = DivergenceRollbacks(config.divergence.max_rollbacks)
        self.divergences: dict[int, Divergence] = {}
        """Attempts killed for a divergence, until their end is decided."""
        self.divergence_quarantined: dict[int, tuple[str, ...]] = {}
        """What each divergence rollback quarantined, by attempt (for the observers)."""
        self.data_skips: list[tuple[int, int]] = []
        """(last healthy step, batches): each rollback's skip past the resumed checkpoint."""
        self.role = NodeRole()
        """This node of the job (set from the launcher config and the environment at setup);
        only the primary prunes, adopts and mirrors the shared checkpoint directory."""
        self._chaos_rng = random.Random(config.chaos.seed)
        chaos = config.chaos
        self.core = Lifecycle(
            CoreSettings(
                name=config.name,
                grace_s=config.stop.grace_s,
                kill_wait_s=config.stop.kill_wait_s,
                started_after_s=config.restart.started_after_s,
                drain_margin_s=config.preemption.drain_margin_s,
                peer_exit_s=config.launcher.peer_exit_s,
                chaos_enabled=chaos.enabled,
                chaos_min_s=chaos.kill_after_min_s,
                chaos_max_s=chaos.kill_after_max_s,
                chaos_max_kills=chaos.max_kills,
                chaos_reason=CHAOS_REASON,
            ),
            self._chaos_rng,
        )
        """The sans-I/O core: every lifecycle decision (stop, drain, escalation, exit)."""
        # set in run()
        self.journal: Journal | None = None
        self.run_record: RunRecord | None = None
        self._lock: paths.StateLock | None = None
        self._sentinel: process.Sentinel | None = None
        self._notify: NotifySocket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._sampler = ResourceSampler(self.ckpt_dir)
        self._child_exited = False
        self.dump_dir = self.state_dir / "dumps"
        self._control: ControlServer | None = None
        self._notify_listening = False
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._scheduler = Scheduler(self.post)
        self._watcher: Watcher | None = None
        self._preemption: PreemptionNotice | None = None
        self._notices_seen: set[str] = set()
        self.journal_first_attempt = -1
        self._systemd = SystemdNotifier(self.environ)
        self.timers: Deadlines[Timer] = Deadlines()
        self.timers.set(Timer.REAP, 0.0)
        if self._systemd.watchdog_interval_s is not None:
            self.timers.set(Timer.WATCHDOG, 0.0)
        self._mirror: RemoteMirror | None = None
        self._emergency_upload: str | None = None
        """Name of the checkpoint uploaded urgently during a preemption drain."""
        self.observer = LoopObserver(self)
        """Notifications and metrics (`notify`, `metrics`): told at the loop's event points."""

    @property
    def machine(self) -> StateMachine:
        return self.core.machine

    @property
    def relaunch_at_s(self) -> float | None:
        return self.core.deadlines.get(Due.RELAUNCH)

    def _defer(self, write: Callable[[], None]) -> None:
        """Record something after this turn's spawn, not before it (the journal's fsyncs)."""
        self._deferred.append(write)

    def _flush_deferred(self) -> None:
        writes, self._deferred = self._deferred, []
        for write in writes:
            write()

    # Implemented by the mixins and the loop (declared for the other mixins).

    def feed(self, event: Event) -> None:
        raise NotImplementedError

    def _poison_rule(
        self,
        attempt: Trainer,
        status: ExitStatus | None,
        verdict: Classification,
        decision: Decision,
    ) -> Decision:
        raise NotImplementedError

    def _on_loss(self, attempt: Trainer, step: int | None, loss: float, now_s: float) -> None:
        raise NotImplementedError

    def _replay_divergence_history(self) -> None:
        raise NotImplementedError

    def data_skip_for(self, resume_from: str) -> int:
        raise NotImplementedError

    def _finish_preempted(self, number: int | None) -> str:
        raise NotImplementedError

    def _read_notify(self) -> None:
        raise NotImplementedError

    def _status_line(self) -> str:
        raise NotImplementedError

    def request_stop(self, why: str) -> None:
        raise NotImplementedError

    def post(self, event: object) -> None:
        raise NotImplementedError

    def checkpoint_now(self, why: str) -> None:
        raise NotImplementedError

    def _after_save(self, size_bytes: int | None) -> None:
        raise NotImplementedError

    def _on_observed_write(self, event: WriteObserved) -> None:
        raise NotImplementedError

    def _on_retention(self, done: RetentionDone) -> None:
        raise NotImplementedError

    def _upload(self, path: str | None) -> None:
        raise NotImplementedError

    def _on_upload(self, result: UploadResult) -> None:
        raise NotImplementedError

    def _remote_drain_report(self, deadline_s: float | None) -> None:
        raise NotImplementedError

    def _watch_groups(self, attempt: Trainer) -> None:
        raise NotImplementedError
