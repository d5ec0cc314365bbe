"""Control requests (`stalwart status|stop|checkpoint`) and the status snapshot."""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import signal

from stalwart.channels.control_socket import Connection
from stalwart.supervisor.state import (
    SupervisorState,
    logger,
)
from stalwart.supervisor.status import running_snapshot


class ControlMixin(SupervisorState):
    """Answers control requests; builds the status snapshot."""

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
        """Ask for a checkpoint at the next step boundary (advice counter; SIGUSR1 to every
        process of the trainer's tree that handles it, never to one it would kill)."""
        self.advice.request_checkpoint()
        attempt = self.attempt
        if attempt is not None:
            for pid in attempt.catchers(signal.SIGUSR1):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
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
        snapshot = running_snapshot(self)
        if self.attempt is not None:
            snapshot["ranks"] = self.attempt.hang.ranks  # heartbeating ranks (torchrun workers)
        return snapshot
