"""Where a job keeps its state and runtime files, and the lock that makes it single."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from stalwart.errors import AlreadyRunning, UsageError

JOURNAL_NAME = "journal.sqlite"
"""The journal's file name inside the state directory."""


def state_dir(name: str, configured: Path | None, environ: Mapping[str, str]) -> Path:
    """`--state-dir`/config, else systemd's $STATE_DIRECTORY, else ./.stalwart/<name>."""
    if configured is not None:
        return configured.absolute()
    systemd_dirs = environ.get("STATE_DIRECTORY", "")
    if systemd_dirs:
        return Path(systemd_dirs.split(":")[0])
    return Path.cwd() / ".stalwart" / name


SYSTEM_STATE_ROOT = Path("/var/lib/stalwart")
"""The service's state dirs (systemd StateDirectory=stalwart/<name>)."""
SYSTEM_STATE_ROOT_ENV = "STALWART_SYSTEM_STATE_ROOT"
"""Puts SYSTEM_STATE_ROOT elsewhere (a service installed under another prefix; tests)."""
RUNTIME_POINTER = "runtime_dir"
"""A file in the state dir naming the runtime dir, so `stalwart status` finds the sockets."""


REMOTE_POINTER = "remote_url"
"""A file in the state dir naming the remote copy's URL, when one is configured."""
CKPT_DIR_POINTER = "ckpt_dir"
"""A file in the state dir naming the checkpoint dir, for `stalwart checkpoints`."""
MEMORY_DIR_POINTER = "memory_dir"
"""A file in the state dir naming the job's memory tier, while the job keeps one."""


def find_state_dir(name: str, configured: Path | None, environ: Mapping[str, str]) -> Path:
    """The state dir of an existing job: like `state_dir`, then the systemd location."""
    if configured is not None or environ.get("STATE_DIRECTORY"):
        return state_dir(name, configured, environ)
    for candidate in (Path.cwd() / ".stalwart" / name, system_state_root(environ) / name):
        if (candidate / JOURNAL_NAME).exists():
            return candidate
    return state_dir(name, configured, environ)


def system_state_root(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(SYSTEM_STATE_ROOT_ENV) or SYSTEM_STATE_ROOT)


def known_state_dirs(environ: Mapping[str, str], cwd: Path | None = None) -> list[tuple[str, Path]]:
    """(name, state dir) of every job in the standard locations, the service's first, then
    `<cwd>/.stalwart/*`: each directory there that holds a journal. Unreadable: skipped."""
    found: list[tuple[str, Path]] = []
    for root in (system_state_root(environ), (cwd or Path.cwd()) / ".stalwart"):
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        found += [(n, root / n) for n in names if (root / n / JOURNAL_NAME).is_file()]
    return found


def _pointer(state: Path, name: str) -> Path | None:
    try:
        text = (state / name).read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def recorded_runtime_dir(state: Path) -> Path | None:
    return _pointer(state, RUNTIME_POINTER)


def recorded_ckpt_dir(state: Path) -> Path | None:
    return _pointer(state, CKPT_DIR_POINTER)


def recorded_memory_dir(state: Path) -> Path | None:
    return _pointer(state, MEMORY_DIR_POINTER)


def recorded_remote_url(state: Path) -> str | None:
    try:
        return (state / REMOTE_POINTER).read_text().strip() or None
    except OSError:
        return None


def runtime_dir(name: str, state: Path, environ: Mapping[str, str]) -> Path:
    """$RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR/stalwart/<name>, else <state>/run."""
    systemd_dirs = environ.get("RUNTIME_DIRECTORY", "")
    if systemd_dirs:
        return Path(systemd_dirs.split(":")[0])
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return Path(xdg) / "stalwart" / name
    return state / "run"


def ensure_private_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UsageError(
            f"cannot create directory {path}: {exc.strerror or exc}; "
            "choose another with --state-dir or fix its permissions"
        ) from None
    return path


class StateLock:
    """An exclusive flock on <state>/lock. The kernel drops it when we die, however we die."""

    def __init__(self, state: Path) -> None:
        self.path = state / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"the job is already running (pid {holder}; lock {self.path}); "
                "stop it first (`stalwart stop NAME`) or use another --name / --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def bind_private_socket(path: Path, kind: socket.SocketKind) -> socket.socket:
    """A unix socket bound at `path` with mode 0600 (no window where others could connect)."""
    if len(os.fsencode(path)) >= 100:
        raise OSError(f"socket path too long for AF_UNIX ({len(str(path))} chars): {path}")
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


def job_journal(name: str, state: Path) -> Path:
    """The journal of an existing job, or a UsageError that says where it was looked for."""
    journal_path = state / JOURNAL_NAME
    if not journal_path.exists():
        raise UsageError(
            f"no journal for job {name!r} at {journal_path}; "
            "pass the job's --state-dir, or run it first"
        )
    return journal_path
