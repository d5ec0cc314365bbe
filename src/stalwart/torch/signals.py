"""Signals that ask for a checkpoint (SIGUSR1) or for a save and exit (SIGTERM).

The handlers only record the signal; the training loop acts at its next step boundary
(`Checkpointer.step_end`), where the state is consistent.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


class SignalRequests:
    """Installs the handlers (main thread only) and restores the previous ones at close."""

    def __init__(self, save_signals: Iterable[int], exit_signals: Iterable[int]) -> None:
        self._save_requested = False
        self.exit_signal: int | None = None
        """The first exit signal received, if any."""
        self._previous: dict[int, Any] = {}
        save, leave = tuple(save_signals), tuple(exit_signals)
        if not save and not leave:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "Checkpointer created outside the main thread: %s not handled",
                ", ".join(signal.Signals(s).name for s in (*save, *leave)),
            )
            return
        for signum in save:
            self._previous[signum] = signal.signal(signum, self._on_save)
        for signum in leave:
            self._previous[signum] = signal.signal(signum, self._on_exit)

    def _on_save(self, signum: int, frame: FrameType | None) -> None:
        self._save_requested = True

    def _on_exit(self, signum: int, frame: FrameType | None) -> None:
        if self.exit_signal is None:
            self.exit_signal = signum

    def take_save_request(self) -> bool:
        """Whether a save was asked for since the last call."""
        requested, self._save_requested = self._save_requested, False
        return requested

    def close(self) -> None:
        """Put back the handlers that were there before (where ours are still installed)."""
        for signum, previous in self._previous.items():
            current = signal.getsignal(signum)
            if current in (self._on_save, self._on_exit):
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
