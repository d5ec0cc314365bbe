"""How a trainer is asked to stop: the stop signal, the grace before SIGKILL, the reap wait."""

from __future__ import annotations

import signal as signals

from pydantic import field_validator

from stalwart.policy.section import NonNegativeS, PositiveS, Section


class StopConfig(Section):
    """How a trainer is asked to stop."""

    signal: str = "SIGTERM"
    """Signal sent to the trainer's whole process group to ask it to save and exit."""
    grace_s: NonNegativeS = 30.0
    """Time the trainer gets after the stop signal before SIGKILL."""
    kill_wait_s: PositiveS = 5.0
    """Time allowed for the kernel to reap the group after SIGKILL before giving up on it."""

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in signals.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"unknown or uncatchable signal {value!r}; use e.g. SIGTERM or SIGINT")
        return name

    @property
    def signum(self) -> signals.Signals:
        return signals.Signals[self.signal]
