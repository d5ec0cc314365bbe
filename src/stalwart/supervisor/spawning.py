"""What an attempt is started as: the program check, the argv (command or torchrun), the env.

The decisions live in `stalwart.policy.launcher` (pure); this mixin feeds them the supervisor's
environment and interpreter, and checks the programs exist before anything starts.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from stalwart import paths
from stalwart.checkpoint.tiers import MEMORY_DIR_ENV, MEMORY_FRACTION_ENV
from stalwart.errors import UsageError
from stalwart.host import process
from stalwart.host.trainer_process import Trainer
from stalwart.journal import Journal
from stalwart.policy import events as ev
from stalwart.policy.launcher import launch_argv, runs_as_script
from stalwart.supervisor.state import CLEARED_ENV, SupervisorState, Timer, logger

FIRST_TREE_SAMPLE_S = 0.5
"""After a spawn, when the trainer's process tree is first sampled."""
RESUME_STATUS_EVERY_S = 1.0
RESUME_EXTEND_S = 30.0
"""While verifying the resume checkpoint: systemd hears every second that we need 30 s more."""


@dataclass(frozen=True)
class ResumePrepared:
    """Posted by the resume thread: the resume point (STALWART_RESUME_FROM), or an error."""

    env_value: str | None
    error: str | None
    memory_found: bool | None = None
    """Whether an intact checkpoint was found in the memory tier (None: no tier)."""


class LaunchMixin(SupervisorState):
    """Builds each attempt's argv and environment."""

    def _check_program(self, program: str, key: str) -> None:
        """Before anything starts: the program is found as the spawn will look for it."""
        try:
            process.resolve_program(program, {**self.environ, **self.config.env}, self.config.cwd)
        except OSError:
            if "/" in program:
                raise UsageError(
                    f"command not found or not executable: {program}; check `{key}`"
                ) from None
            raise UsageError(
                f"command not found: {program!r} is not on PATH; check `{key}`"
            ) from None

    def _check_command(self) -> None:
        if self.config.cwd is not None and not self.config.cwd.is_dir():
            raise UsageError(f"cwd {self.config.cwd} is not a directory; fix `cwd` in the config")
        launcher = self.config.launcher
        command = self.config.command
        if launcher.kind == "direct":
            self._check_program(command[0], "command")
            return
        if launcher.torchrun is not None:
            self._check_program(launcher.torchrun[0], "launcher.torchrun")
        elif importlib.util.find_spec("torch") is None:  # finds it without importing it
            raise UsageError(
                f"launcher.kind torchrun runs `{sys.executable} -m torch.distributed.run`, but "
                "torch is not installed for that Python; install stalwart[torch] there, or set "
                "launcher.torchrun to a torchrun command"
            )
        if runs_as_script(command):
            script = Path(command[0])
            resolved = script if script.is_absolute() else (self.config.cwd or Path.cwd()) / script
            if not resolved.is_file():
                raise UsageError(f"training script not found: {command[0]}; check `command`")
        else:
            self._check_program(command[0], "command")

    def _watch_groups(self, attempt: Trainer) -> None:
        """Tell the sentinel about process groups the trainer's tree made outside its own
        (torchrun's workers), so they die with a supervisor killed outright."""
        assert self._sentinel is not None
        groups = process.tree_groups(attempt.pid) - {attempt.pid}
        for pgid in groups - attempt.watched_groups:
            self._sentinel.watch(pgid)
        for pgid in attempt.watched_groups - groups:
            self._sentinel.forget(pgid)
        attempt.watched_groups = groups

    def trainer_argv(self) -> list[str]:
        """The command itself, or torchrun starting it as this node's workers."""
        return launch_argv(
            self.config.launcher,
            self.config.command,
            job_name=self.config.name,
            node_rank=self.role.node_rank,
            python=sys.executable,
        )

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
            STALWART_DATA_SKIP=str(self.data_skip_for(resume_from)),
            **self.role.env(),
        )
        if self.memory_dir is not None:
            env[MEMORY_DIR_ENV] = str(self.memory_dir)
            env[MEMORY_FRACTION_ENV] = str(self.config.checkpoint.memory.max_memory_fraction)
        return env

    def _prepare_resume(self) -> ev.Event | None:
        """Choose the newest checkpoint that verifies intact, in a thread of its own.

        Verifying hashes the whole checkpoint (seconds per GB); meanwhile the loop keeps
        answering signals, control requests and systemd's watchdog. The result comes back
        as `ResumePrepared`. Newer broken checkpoints are quarantined on the way. On a
        directory shared by nodes, an unfinished save may be another node's, still
        running: the trainer's rank 0 removes those once every rank is resuming; only the
        primary removes a prune's leftovers.
        """
        keeper = self.keeper
        assert keeper is not None
        journal_path = self.state_dir / paths.JOURNAL_NAME
        single, primary = self.role.nnodes == 1, self.role.primary
        now_s = self.clock.monotonic()
        self._resume_pending_since_s = now_s
        self.timers.set(Timer.RESUME_STATUS, now_s + RESUME_STATUS_EVERY_S)

        def prepare() -> None:
            try:
                if self._resume_journal is None:  # this thread's own SQLite connection
                    self._resume_journal = Journal(journal_path)
                    self._resume_journal.survive_failures()
                decision = keeper.prepare_resume(
                    remove_staging=single, remove_deleting=primary, journal=self._resume_journal
                )
            except Exception as exc:
                logger.exception(
                    "%s: choosing the checkpoint to resume from failed", self.config.name
                )
                self.post(ResumePrepared(None, f"{type(exc).__name__}: {exc}"))
            else:
                self.post(ResumePrepared(decision.env_value, None, keeper.memory_found))

        self._resume_pool.submit(prepare)
        return None

    def _on_resume_prepared(self, prepared: ResumePrepared) -> None:
        self._resume_pending_since_s = None
        self.timers.clear(Timer.RESUME_STATUS)
        now_s = self.clock.monotonic()
        if prepared.error is not None or prepared.env_value is None:
            self.feed(ev.InternalError(f"resume: {prepared.error}", now_s))
            return
        self._resume = prepared.env_value
        evidence, self.tier_evidence = self.tier_evidence, None
        if evidence is not None and prepared.memory_found is not None and self.pacer is not None:
            self.pacer.on_relaunch(evidence, prepared.memory_found)
        self.feed(ev.ResumeReady(now_s))

    def _close_resume_thread(self) -> None:
        def close() -> None:
            if self._resume_journal is not None:
                self._resume_journal.close()
                self._resume_journal = None

        self._resume_pool.close(then=close)

    def _spawn(self) -> ev.Event:
        """Start the next attempt from the prepared resume point: `Launched` or `LaunchFailed`."""
        assert self.journal is not None
        assert self.run_record is not None
        run_id = self.run_record.run_id
        number = self.journal.next_attempt(run_id)
        if self.journal_first_attempt < 0:
            self.journal_first_attempt = number
        resume_from = self._resume
        self.advice.set_skip_batches(self.data_skip_for(resume_from))
        self.losses.new_attempt()
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
            return ev.LaunchFailed(
                number, f"cannot start {argv[0]!r}: {exc}", self.clock.monotonic()
            )
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
        if number == self.journal_first_attempt:
            self._systemd.ready(self._status_line())
        else:
            self._systemd.status(self._status_line())
        # The OOM evidence needs a baseline of the cgroup's counters now; the first sample of
        # the process tree (a walk of /proc) waits a little, so the loop can pump the new
        # trainer's first output instead.
        attempt.record_sample(self._sampler.sample(None))
        self.timers.set(Timer.SAMPLE, self.clock.monotonic() + FIRST_TREE_SAMPLE_S)
        return ev.Launched(number, attempt.pid, attempt.started_s)

    def _resume_progress(self, now_s: float) -> None:
        """While the resume is prepared off the loop: STATUS and EXTEND_TIMEOUT to systemd."""
        since = self._resume_pending_since_s
        if since is None:
            return
        self.timers.set(Timer.RESUME_STATUS, now_s + RESUME_STATUS_EVERY_S)
        self._systemd.status(
            f"verifying the checkpoint to resume from ({now_s - since:.0f} s so far)"
        )
        self._systemd.extend_timeout(RESUME_EXTEND_S)
