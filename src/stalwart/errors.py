"""The error hierarchy. Every error says what was wrong, where, and what to do."""

from __future__ import annotations

from stalwart.types import ExitCode


class StalwartError(Exception):
    """Base class; `exit_code` is what `stalwart` exits with when this escapes."""

    exit_code: ExitCode = ExitCode.GAVE_UP


class UsageError(StalwartError):
    """The command line asks for something impossible; nothing was started."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A config file or option is invalid; names the file and key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}\nnothing was started; fix the config")


class AlreadyRunning(UsageError):
    """Another supervisor holds the lock on this job's state directory."""


class JournalUnusable(UsageError):
    """The journal cannot be used: written by a newer stalwart, not an SQLite database, or
    not openable or writable at start. Names the file and what to do; nothing was started
    (exit 2, so systemd's `RestartPreventExitStatus` does not loop on it)."""


class CheckpointCorrupt(StalwartError):
    """A checkpoint failed verification; it is never resumed from."""


class GaveUp(StalwartError):
    """The restart policy stopped relaunching the job."""

    exit_code = ExitCode.GAVE_UP
