"""The remote copy as the loop sees it: restore on a fresh machine, upload after each
save (the emergency one first), and say on a preemption drain what the next machine
will resume from."""

from __future__ import annotations

from pathlib import Path

from stalwart.checkpoint import CheckpointState, list_checkpoints
from stalwart.remote import (
    Remote,
    RemoteMirror,
    RemoteUnavailable,
    RestoreOutcome,
    UploadResult,
    drain_message,
    restore_newest,
)
from stalwart.supervisor.state import SupervisorState, logger


class RemoteMixin(SupervisorState):
    """Mirrors checkpoints to `checkpoint.remote.url` (any fsspec URL)."""

    def _start_remote(self) -> None:
        """At start, before the first launch: fetch a newer remote checkpoint, then mirror."""
        config = self.config.checkpoint.remote
        if config.url is None:
            return
        if not self.role.primary:
            # The nodes share one checkpoint directory: node 0 restores and uploads it.
            logger.info(
                "%s: node %d of %d: the remote copy %s is kept by node 0",
                self.config.name,
                self.role.node_rank,
                self.role.nnodes,
                config.url,
            )
            return
        local = [
            info.step
            for info in list_checkpoints(self.ckpt_dir)
            if info.state in (CheckpointState.INTACT, CheckpointState.UNVERIFIED)
            and info.step is not None
        ]
        restored = restore_newest(config, self.ckpt_dir, newer_than_step=max(local, default=None))
        log = logger.warning if restored.outcome is RestoreOutcome.UNREACHABLE else logger.info
        log("%s: remote %s: %s", self.config.name, config.url, restored.message)
        try:
            remote = Remote.open(config.url, config.storage_options, timeout_s=config.timeout_s)
        except RemoteUnavailable as exc:
            logger.warning("%s: no remote copy: %s", self.config.name, exc)
            return
        self._mirror = RemoteMirror(
            remote, config, on_result=self.post, newest_durable=restored.newest_remote
        )
        self._mirror.start()

    def _upload(self, path: str | None) -> None:
        if self._mirror is None or not path:
            return
        local = Path(path)
        if local.parent != self.ckpt_dir or not local.name.startswith("step-"):
            return  # only the store's committed checkpoints are mirrored
        urgent = self.core.notice is not None
        if self._mirror.enqueue(local, urgent=urgent) and urgent:
            self._emergency_upload = local.name

    def _on_upload(self, result: UploadResult) -> None:
        if result.ok:
            logger.info(
                "%s: %s durable at %s after %.1f s%s",
                self.config.name,
                result.name,
                result.remote_url,
                result.persist_s or 0.0,
                f"; pruned remote {', '.join(result.pruned)}" if result.pruned else "",
            )
            if self.pacer is not None and result.persist_s is not None:
                # The interval is never shorter than the time to make a save durable.
                self.advice.set_interval(self.pacer.on_remote_persist(result.persist_s).interval_s)
        else:
            logger.warning(
                "%s: upload of %s %s: %s",
                self.config.name,
                result.name,
                result.outcome.value,
                result.error or "",
            )

    def _remote_drain_report(self, deadline_s: float | None) -> None:
        """On a preemption drain: wait (until the deadline) for the emergency upload, then
        say plainly which checkpoint the next machine will resume from."""
        mirror = self._mirror
        if mirror is None:
            return
        wait_s = 30.0 if deadline_s is None else max(deadline_s - self.clock.monotonic(), 0.0)
        name = self._emergency_upload
        finished = mirror.wait_for(name, wait_s) if name is not None else None
        logger.warning(
            "%s: %s",
            self.config.name,
            drain_message(name, finished, mirror.newest_durable, deadline_s=wait_s),
        )

    def _close_remote(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
