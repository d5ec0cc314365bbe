"""The trainer's side of the contract, for any Python training loop. No torch import.

    from stalwart.client import Client
    sw = Client()                      # a no-op when not run under `stalwart run`
    start = ...                        # restore from sw.resume_from if set
    for step in range(start, total):
        train_step()
        sw.step(step, loss=loss)       # heartbeat: STEP=n (LOSS=x: NaN and spike watch)
        if sw.should_checkpoint(step):
            t0 = time.monotonic(); save(step); sw.saved(step, stall_s=time.monotonic() - t0)
        if sw.should_exit():           # drain requested (stop, preemption): saved, now leave
            break

Heartbeats and reports go over a unix datagram socket (one `sendto` each, never
blocking: a full or missing socket drops the datagram). Under torchrun (`RANK` set)
each datagram carries `RANK=<n>`, so the supervisor watches every worker. The advice
file is read at most once per call through one `stat`, parsed only when it changed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, SupportsFloat

MEMORY_DIR_ENV = "STALWART_MEMORY_DIR"
"""The memory tier the supervisor keeps for the job (checkpoint/tiers.py)."""

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1800.0
REPORT_WAIT_S = 0.5
"""How long a report (not a heartbeat) may wait for room in the supervisor's queue."""


DATA_SKIP_ENV = "STALWART_DATA_SKIP"
"""Batches to skip after restoring the resume checkpoint (set after a divergence rollback)."""


def _skip(text: str) -> int:
    return int(text) if text.strip().isdecimal() else 0


def _as_float(value: SupportsFloat) -> float:
    """A float of a number or a 0-d tensor (detached first: no autograd warning)."""
    detach = getattr(value, "detach", None)
    return float(detach() if callable(detach) else value)


MAX_INT = 2**63 - 1
"""The largest integer the supervisor accepts (its journal's 64-bit INTEGER)."""


def _sendable(value: object) -> bool:
    """Not a number the supervisor would reject: a float that is not finite, or an int
    outside 0..MAX_INT."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 0 <= value <= MAX_INT
    return True


class Client:
    """Heartbeats, checkpoint reports and advice. Every method is safe to call standalone."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        dump_stacks: bool = True,
        heartbeat_interval_s: float = 0.1,
    ) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self._heartbeat_interval_s = heartbeat_interval_s
        self._last_heartbeat_s = -float("inf")
        self.run_id = env.get("STALWART_RUN_ID", "")
        self.attempt = int(env.get("STALWART_ATTEMPT", "0") or 0)
        self.ckpt_dir = Path(env["STALWART_CKPT_DIR"]) if env.get("STALWART_CKPT_DIR") else None
        self.resume_from = env.get("STALWART_RESUME_FROM", "") or None
        self.skip_batches = _skip(env.get(DATA_SKIP_ENV, ""))
        """Batches to skip past the resumed checkpoint's data position (a divergence
        rollback: the data that made the loss diverge is not seen again); 0 usually."""
        self.memory_dir = Path(env[MEMORY_DIR_ENV]) if env.get(MEMORY_DIR_ENV) else None
        """The memory tier the supervisor keeps for this job (None: disk only)."""
        self.memory_tier = False
        """A Checkpointer writes the memory tier: memory_interval_s paces saves too."""
        self._last_loss: SupportsFloat | None = None
        self._notify_path = env.get("STALWART_NOTIFY_SOCKET", "")
        self._advice_path = env.get("STALWART_ADVICE_FILE", "")
        # Under torchrun every worker heartbeats for itself: the supervisor tracks each rank
        # and calls a hang when any one falls silent. Encoded once; each datagram appends it.
        rank = env.get("RANK", "").strip()
        self._rank_line = f"\nRANK={int(rank)}".encode() if rank.isdecimal() else b""
        self._sock: socket.socket | None = None
        if self._notify_path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self._advice_key: tuple[int, int, int] | None = None
        self._advice: dict[str, Any] = {
            "interval_s": DEFAULT_INTERVAL_S,
            "checkpoint_now": 0,
            "drain": False,
            "deadline_unix": None,
            "memory_interval_s": None,
        }
        self._acked_checkpoint_now = 0
        self._last_save_s = clock()
        self._last_memory_save_s = -float("inf")
        self._saved_since_drain = False
        self._dump_file: IO[str] | None = None
        dump_dir = env.get("STALWART_DUMP_DIR", "")
        if dump_stacks and dump_dir:
            self._install_stack_dump(Path(dump_dir))
        self._read_advice()
        self._acked_checkpoint_now = int(self._advice["checkpoint_now"])

    @property
    def supervised(self) -> bool:
        return bool(self._notify_path or self._advice_path)

    # notify

    def send(self, **fields: object) -> None:
        """Send KEY=VALUE lines in one datagram (a report: waits briefly for queue room)."""
        self._send(fields, REPORT_WAIT_S)

    def _send(self, fields: Mapping[str, object], wait_s: float) -> None:
        # Reports wait up to `wait_s` for room in the supervisor's queue; heartbeats
        # (wait_s=0) are dropped instead. Nobody listening never stops training.
        if self._sock is None:
            return
        # The supervisor drops a line it cannot use (inf, nan, an int beyond 64 bits) as
        # malformed; leave such a field out here, so the rest of the report still counts.
        payload = "\n".join(
            f"{key}={value}" for key, value in fields.items() if _sendable(value)
        ).encode()
        payload += self._rank_line
        with contextlib.suppress(OSError):
            self._sock.settimeout(wait_s)
            self._sock.sendto(payload, self._notify_path)

    def ready(self) -> None:
        self.send(READY=1)

    def step(self, step: int, loss: SupportsFloat | None = None) -> None:
        """Heartbeat: this step is done, with its training loss if given (the supervisor
        watches it for NaN and spikes; a 0-d tensor is read only when sent). At most one per
        `heartbeat_interval_s` is sent."""
        if loss is not None:
            self._last_loss = loss  # a reference: read (synced) only when sent or saved
        if self._sock is None:
            return
        now = self._clock()
        if now < self._last_heartbeat_s + self._heartbeat_interval_s:
            return
        self._last_heartbeat_s = now
        fields: dict[str, object] = {"STEP": int(step)}
        if loss is not None:
            # As text: `nan` and `inf` must reach the supervisor (LOSS alone accepts them).
            fields["LOSS"] = repr(_as_float(loss))
        self._send(fields, 0.0)

    def report_loss(self, step: int, loss: SupportsFloat) -> None:
        """A loss report apart from the heartbeats (a framework's logged loss, a few per
        minute): every one is sent, so each counts once in the supervisor's spike watch."""
        self._last_loss = loss
        self.send(STEP=int(step), LOSS=repr(_as_float(loss)))

    def skip_unsupported(self, who: str) -> None:
        """Log that `who` cannot skip the batches a divergence rollback asks to skip."""
        if self.skip_batches > 0:
            logger.warning(
                "stalwart: a divergence rollback asks to skip %d batches past the resumed "
                "checkpoint, which %s cannot do by itself; skip them in your data pipeline "
                "($%s), or the bad stretch is trained on again (one more rollback)",
                self.skip_batches,
                who,
                DATA_SKIP_ENV,
            )

    def loss_meta(self) -> dict[str, Any]:
        """The latest loss given to `step`, as checkpoint meta (`metrics`, as the framework
        callbacks record theirs); empty when none was given or it is not finite."""
        if self._last_loss is None:
            return {}
        value = _as_float(self._last_loss)
        return {"metrics": {"loss": value}} if math.isfinite(value) else {}

    def status(self, text: str) -> None:
        self.send(STATUS=text.replace("\n", " "))

    def checkpoint_begin(self, step: int) -> None:
        self.send(CKPT_BEGIN=int(step))

    def checkpoint_done(
        self,
        step: int,
        *,
        stall_s: float,
        persist_s: float | None = None,
        size_bytes: int | None = None,
        path: str | os.PathLike[str] | None = None,
        tier: str | None = None,
    ) -> None:
        """Report a finished save: the time training was blocked, and until it was durable
        (for `tier="memory"`: committed in the memory tier)."""
        fields: dict[str, object] = {}
        if tier is not None:
            fields["CKPT_TIER"] = tier
        if math.isfinite(stall_s):
            fields["CKPT_STALL_S"] = f"{max(stall_s, 0.0):.6f}"
        if persist_s is not None and math.isfinite(persist_s):
            fields["CKPT_PERSIST_S"] = f"{max(persist_s, 0.0):.6f}"
        if size_bytes is not None:
            fields["CKPT_BYTES"] = int(size_bytes)
        fields["CKPT_DONE"] = os.fspath(path) if path is not None else str(step)
        self.send(**fields)

    def done(self) -> None:
        self.send(DONE=1)

    # advice

    def _read_advice(self) -> None:
        if not self._advice_path:
            return
        try:
            st = os.stat(self._advice_path)
        except OSError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._advice_key:
            return
        try:
            with open(self._advice_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return  # replaced atomically, so this is a real fault; keep the last good advice
        if isinstance(data, dict):
            self._advice.update(data)
            self._advice_key = key

    @property
    def interval_s(self) -> float:
        self._read_advice()
        return float(self._advice["interval_s"])

    @property
    def deadline_unix(self) -> float | None:
        self._read_advice()
        value = self._advice.get("deadline_unix")
        return float(value) if value is not None else None

    @property
    def drain(self) -> bool:
        self._read_advice()
        return bool(self._advice["drain"])

    @property
    def memory_interval_s(self) -> float | None:
        """The advised memory-tier interval (None: the supervisor keeps no memory tier)."""
        self._read_advice()
        value = self._advice.get("memory_interval_s")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    def should_checkpoint(self, step: int, now_s: float | None = None) -> bool:
        """True at a step boundary where a save is due: interval elapsed, asked for, or
        draining; with a memory tier (`memory_tier`), also its shorter interval."""
        now = self._clock() if now_s is None else now_s
        if self.durable_due(now):
            return True
        memory_s = self.memory_interval_s if self.memory_tier else None
        if memory_s is None:
            return False
        return now >= max(self._last_save_s, self._last_memory_save_s) + memory_s

    def durable_due(self, now_s: float | None = None) -> bool:
        """Whether a save now must reach the durable tier: its interval elapsed, a save was
        asked for (`stalwart checkpoint`), or a drain is on (the machine may go away)."""
        self._read_advice()
        now = self._clock() if now_s is None else now_s
        if int(self._advice["checkpoint_now"]) > self._acked_checkpoint_now:
            return True
        if self._advice["drain"] and not self._saved_since_drain:
            return True
        # Against the due time, not `now - last >= interval`: in floating point
        # (last + interval) - last can fall short of interval, so a caller passing
        # now_s = last save + interval would be told "not yet" for some clock values.
        return now >= self._last_save_s + float(self._advice["interval_s"])

    def saved(
        self,
        step: int,
        *,
        stall_s: float | None = None,
        persist_s: float | None = None,
        size_bytes: int | None = None,
        path: str | os.PathLike[str] | None = None,
        now_s: float | None = None,
        tier: str | None = None,
    ) -> None:
        """Record a completed save (durable; or, `tier="memory"`, in the memory tier only);
        reports its costs when given."""
        now = self._clock() if now_s is None else now_s
        if tier == "memory":
            self._last_memory_save_s = now
        else:
            self._last_save_s = now
            self._acked_checkpoint_now = int(self._advice["checkpoint_now"])
            if self._advice["drain"]:
                self._saved_since_drain = True
        if stall_s is not None:
            self.checkpoint_done(
                step,
                stall_s=stall_s,
                persist_s=persist_s,
                size_bytes=size_bytes,
                path=path,
                tier=tier,
            )

    def should_exit(self) -> bool:
        """True once a drain was requested and a save has completed since."""
        return self.drain and self._saved_since_drain

    # diagnostics

    def _install_stack_dump(self, dump_dir: Path) -> None:
        """On SIGUSR2 the supervisor gets every thread's Python stack, even if the GIL is stuck."""
        try:
            dump_dir.mkdir(parents=True, exist_ok=True)
            self._dump_file = open(  # noqa: SIM115 - must stay open for faulthandler
                dump_dir / f"stacks-{os.getpid()}.txt", "a", encoding="utf-8"
            )
            faulthandler.register(signal.SIGUSR2, file=self._dump_file, all_threads=True)
        except (OSError, ValueError, RuntimeError) as exc:
            logger.warning("stack dumps unavailable: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._dump_file is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                faulthandler.unregister(signal.SIGUSR2)
            self._dump_file.close()
            self._dump_file = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
