"""The core's actions carried out: each is a few lines of I/O, and two of them answer.

`feed` hands an event to the core and carries out what it returns, in order; a reply
(`Decided`, `StacksRequested`, `Launched`, ...) is fed back the same way, so one event
and everything it causes are handled before the loop goes on.
"""

from __future__ import annotations

import signal
from collections import deque

from stalwart.host import process
from stalwart.policy import events as ev
from stalwart.supervisor.ending import EndingMixin
from stalwart.supervisor.spawning import LaunchMixin
from stalwart.supervisor.state import logger


class ActionsMixin(EndingMixin, LaunchMixin):
    """Carries out the core's actions."""

    def feed(self, first: ev.Event) -> None:
        queue: deque[ev.Event] = deque([first])
        while queue:
            event = queue.popleft()
            for action in self.core.handle(event):
                self.observer.on_action(action)
                reply = self._carry_out(action)
                if reply is not None:
                    queue.append(reply)
            self.observer.on_event(event)

    def _carry_out(self, action: ev.ActionT) -> ev.Event | None:
        now_s = self.clock.monotonic()
        match action:
            case ev.PrepareResume():
                return self._prepare_resume()
            case ev.Spawn():
                return self._spawn()
            case ev.SendStop():
                if self.attempt is not None:
                    self.attempt.send_stop(self.config.stop.signum)
            case ev.Kill():
                if self.attempt is not None:
                    self.attempt.kill()
            case ev.InjectFault():
                self._inject_fault()
            case ev.DumpStacks():
                if self.attempt is None:
                    return ev.StacksRequested(0.0, now_s)
                self.attempt.hang_killed = True
                wait_s = self.attempt.dump_stacks(self.dump_dir, self.config.hang.dump_wait_s)
                return ev.StacksRequested(wait_s, self.clock.monotonic())
            case ev.Abandon():
                attempt = self.attempt
                if attempt is not None:
                    attempt.finish_output()
                    self._ended_attempt, self._ended_status = attempt, None
                    self.attempt = None
            case ev.Advise(checkpoint=checkpoint, deadline_unix=deadline_unix):
                self.advice.drain(checkpoint=checkpoint, deadline_unix=deadline_unix)
            case ev.SystemdStopping(text=text, extend_timeout_s=extend_s):
                self._systemd.stopping(text)
                self._systemd.extend_timeout(extend_s)
            case ev.Decide():
                return self._decide(action)
            case ev.Conclude():
                self._conclude(action)
            case ev.Finish():
                self._finish(action)
        return None

    def _inject_fault(self) -> None:
        attempt = self.attempt
        if attempt is None:
            return
        chaos = self.config.chaos
        logger.warning(
            "%s: chaos: sending %s to trainer pid %d (injected fault %d of at most %d)",
            self.config.name,
            chaos.signal,
            attempt.pid,
            self.core.chaos_kills,
            chaos.max_kills,
        )
        attempt.chaos_killed = True
        process.signal_group(attempt.pid, signal.Signals[chaos.signal])
