"""One attempt's trainer process: spawned, its output pumped, signalled, killed, drained.

The supervisor owns the decisions; this module owns the mechanics of one child
process and what is observed about it (output tail, heartbeats, resources).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, BinaryIO

from stalwart.clock import Clock
from stalwart.host import process
from stalwart.host.resources import ResourceSample
from stalwart.policy.hang import HangConfig, HangDetector

logger = logging.getLogger(__name__)

DRAIN_OUTPUT_S = 0.5
"""How long to keep reading a dead trainer's pipes held open by an escaped descendant."""


class Pump:
    """Selector callback that moves one pipe's bytes into its LineTail."""

    def __init__(
        self, selector: selectors.BaseSelector, pipe: IO[bytes], tail: process.LineTail
    ) -> None:
        self._selector = selector
        self._pipe = pipe
        self._tail = tail

    def fileno(self) -> int:
        return self._pipe.fileno()

    @property
    def closed(self) -> bool:
        return self._pipe.closed

    def __call__(self) -> bool:
        """Read what is available; False once the pipe is closed."""
        try:
            data = os.read(self._pipe.fileno(), 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if data:
            self._tail.feed(data)
            return True
        self.close()
        return False

    def close(self) -> None:
        if self._pipe.closed:
            return
        self._tail.close()
        self._selector.unregister(self._pipe)
        self._pipe.close()


def catches_signal(pid: int, signum: int) -> bool:
    """Does the process have a handler for `signum`? (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    except (OSError, ValueError):
        pass
    return False


class Trainer:
    """The trainer process of one attempt and what is known about it."""

    def __init__(
        self,
        *,
        number: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None,
        resume_from: str,
        selector: selectors.BaseSelector,
        sinks: tuple[BinaryIO, BinaryIO],
        prefix: bytes,
        tail_lines: int,
        hang: HangConfig,
        clock: Clock,
    ) -> None:
        self.number = number
        self.resume_from = resume_from
        self._clock = clock
        self.popen: subprocess.Popen[bytes] = process.spawn(argv, env, cwd)
        self.started_s = clock.monotonic()
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.hang = HangDetector(hang)
        self.status_text = ""
        self.stop_signal_sent = False
        self.killed = False
        self.hang_killed = False
        self.diverged: str | None = None
        """The loss diverged (described): killed by the supervisor, no save."""
        self.done_reported = False
        self.peer_drained = False
        """A rank said PEER_DRAIN=1: another node drained the job."""
        self.ready_s: float | None = None
        """Launch to first step heartbeat, once seen."""
        self.produced_checkpoint = False
        """A checkpoint was written during this attempt (the crash-loop rule needs it)."""
        self.chaos_killed = False
        self.reported_saves = False
        """The trainer reports its saves (CKPT_*): the directory watcher's view is not needed."""
        self.ckpt_step: int | None = None
        """Step of the save in progress (CKPT_BEGIN), until its report."""
        self.first_sample: ResourceSample | None = None
        self.last_sample: ResourceSample | None = None
        self.peak_rss_bytes = 0
        self.watched_groups: set[int] = set()
        """Process groups of the tree outside the trainer's own (torchrun's workers) that
        the sentinel was told about."""
        self._pumps: list[Pump] = []
        for pipe, sink in ((self.popen.stdout, sinks[0]), (self.popen.stderr, sinks[1])):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            pump = Pump(selector, pipe, process.LineTail(sink, prefix, self.tail))
            selector.register(pipe, selectors.EVENT_READ, pump)
            self._pumps.append(pump)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def uptime_s(self) -> float:
        return self._clock.monotonic() - self.started_s

    def record_sample(self, sample: ResourceSample) -> None:
        if self.first_sample is None:
            self.first_sample = sample
        self.last_sample = sample
        self.peak_rss_bytes = max(self.peak_rss_bytes, sample.tree_rss_bytes)

    def send_stop(self, signum: int) -> None:
        """The stop signal, once, to the trainer's group (the core times the SIGKILL).

        Only the trainer's own group: a launcher that puts its workers in sessions of their
        own (torchrun) forwards the signal to them itself, and waits for them.
        """
        if not self.stop_signal_sent:
            process.signal_group(self.pid, signum)
            self.stop_signal_sent = True

    def catchers(self, signum: int) -> list[int]:
        """The processes of the trainer's tree that handle `signum` (the client's SIGUSR2,
        a framework's SIGUSR1): under torchrun the workers, not the agent."""
        return [pid for pid in process.tree_pids(self.pid) if catches_signal(pid, signum)]

    def dump_stacks(self, dump_dir: Path, dump_wait_s: float) -> float:
        """Get the trainer's Python stacks into `dump_dir`; how long to wait before SIGKILL.

        Every process of the tree that handles SIGUSR2 (a client-instrumented trainer or
        torchrun worker: faulthandler writes every thread's stack, even with the GIL stuck)
        is asked; otherwise py-spy is tried on the trainer if installed.
        """
        catchers = self.catchers(signal.SIGUSR2)
        if catchers:
            for pid in catchers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
                    # A SIGSTOPped trainer only handles it once continued.
                    os.kill(pid, signal.SIGCONT)
            logger.info(
                "asked pid(s) %s for their stacks (SIGUSR2) into %s",
                ", ".join(map(str, catchers)),
                dump_dir,
            )
            return dump_wait_s
        self._py_spy_dump(dump_dir, dump_wait_s)
        return 0.0

    def _py_spy_dump(self, dump_dir: Path, timeout_s: float) -> None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            return
        target = dump_dir / f"py-spy-{self.pid}.txt"
        try:
            dump_dir.mkdir(parents=True, exist_ok=True)
            with target.open("w") as handle:
                subprocess.run(
                    [py_spy, "dump", "--pid", str(self.pid)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=max(timeout_s, 1.0),
                    check=False,
                )
            logger.info("py-spy stacks of pid %d in %s", self.pid, target)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("py-spy dump of pid %d failed: %s", self.pid, exc)

    def kill(self) -> None:
        """SIGKILL every process group of the tree (torchrun's workers lead their own)."""
        process.signal_tree(self.pid, signal.SIGKILL)
        self.killed = True

    def finish_output(self) -> None:
        """Read what the pipes still hold, then close them (bounded in time)."""
        pumps = [pump for pump in self._pumps if not pump.closed]
        deadline = self._clock.monotonic() + DRAIN_OUTPUT_S
        while pumps:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(pumps, [], [], remaining)
            pumps = [pump for pump in pumps if pump not in ready or pump()]
        for pump in pumps:
            pump.close()
