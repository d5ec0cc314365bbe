"""What an attempt is started as: the program check, the argv (command or torchrun), the env.

The decisions live in `stalwart.policy.launcher` (pure); this mixin feeds them the supervisor's
environment and interpreter, and checks the programs exist before anything starts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from stalwart.errors import UsageError
from stalwart.host import process
from stalwart.host.trainer_process import Trainer
from stalwart.policy import events as ev
from stalwart.policy.launcher import launch_argv, runs_as_script
from stalwart.supervisor.state import CLEARED_ENV, SupervisorState, logger


class LaunchMixin(SupervisorState):
    """Builds each attempt's argv and environment."""

    def _check_program(self, program: str, key: str) -> None:
        cwd = self.config.cwd or Path.cwd()
        if "/" in program:
            resolved = (cwd / program) if not Path(program).is_absolute() else Path(program)
            if not (resolved.is_file() and os.access(resolved, os.X_OK)):
                raise UsageError(f"command not found or not executable: {program}; check `{key}`")
            return
        path = {**self.environ, **self.config.env}.get("PATH", os.defpath)
        if shutil.which(program, path=path) is None:
            raise UsageError(f"command not found: {program!r} is not on PATH; check `{key}`")

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
            **self.role.env(),
        )
        return env

    def _prepare_resume(self) -> ev.Event | None:
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
        self._resume = decision.env_value
        return ev.ResumeReady(self.clock.monotonic())

    def _spawn(self) -> ev.Event:
        """Start the next attempt from the prepared resume point: `Launched` or `LaunchFailed`."""
        assert self.journal is not None
        assert self.run_record is not None
        run_id = self.run_record.run_id
        number = self.journal.next_attempt(run_id)
        if self.journal_first_attempt < 0:
            self.journal_first_attempt = number
        resume_from = self._resume
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
        self._sample_at_s = self.clock.monotonic()  # a baseline sample now (OOM evidence)
        return ev.Launched(number, attempt.pid, attempt.started_s)

    def _resume_progress(self, now_s: float) -> None:
        """While the resume is prepared off the loop: STATUS and EXTEND_TIMEOUT to systemd."""
        return
