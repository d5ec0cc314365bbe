"""Is a SIGTERM to the supervisor a preemption or a plain stop?

A spot machine's last warning may be only the SIGTERM of its own shutdown. The
rule (`stalwart.policy.sigterm.sigterm_meaning`) is pure; `probe_shutdown` here gathers
the evidence:
systemd's own answer (`systemctl is-system-running` says `stopping`) when
systemd is PID 1, else marker files that a shutdown leaves in /run. Without
either (a container, no markers) the evidence is UNKNOWN, and with the config
flag on that counts as a preemption: exit 75 ("resume me") is the safe side,
since exit 0 tells an orchestrator that the job is finished.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from stalwart.policy.sigterm import ShutdownEvidence

logger = logging.getLogger(__name__)

RUN_DIR = Path("/run")
SHUTDOWN_MARKERS = ("systemd/shutdown/scheduled", "nologin")
"""Relative to the run dir: logind's scheduled shutdown, and the login block that
systemd-user-sessions (or `shutdown`) creates as the system goes down."""
SYSTEMCTL_TIMEOUT_S = 1.0
STOPPING_STATES = frozenset({"stopping"})
RUNNING_STATES = frozenset({"initializing", "starting", "running", "degraded", "maintenance"})


def systemctl_system_state(timeout_s: float = SYSTEMCTL_TIMEOUT_S) -> str | None:
    """`systemctl is-system-running`'s answer, or None when it cannot be had in time."""
    executable = shutil.which("systemctl")
    if executable is None:
        return None
    try:
        result = subprocess.run(
            [executable, "is-system-running"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,  # non-zero for any state but "running"; the text is the answer
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("systemctl is-system-running failed: %s", exc)
        return None
    return result.stdout.strip() or None


def probe_shutdown(
    run_dir: Path = RUN_DIR,
    *,
    system_state: Callable[[], str | None] = systemctl_system_state,
) -> ShutdownEvidence:
    """Evidence that the system is going down. Runs `system_state` (by default a
    `systemctl` child, at most ~1 s) only when systemd is PID 1 under `run_dir`."""
    if (run_dir / "systemd" / "system").is_dir():
        state = system_state()
        if state in STOPPING_STATES:
            return ShutdownEvidence.SHUTTING_DOWN
        if state in RUNNING_STATES:
            return ShutdownEvidence.RUNNING
        logger.debug("systemd state %r says nothing about a shutdown", state)
    for marker in SHUTDOWN_MARKERS:
        if (run_dir / marker).exists():
            return ShutdownEvidence.SHUTTING_DOWN
    return ShutdownEvidence.UNKNOWN
