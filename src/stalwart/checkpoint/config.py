"""The `checkpoint` config section: where checkpoints go, what is kept, the interval, the remote."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from stalwart.policy.interval import IntervalConfig
from stalwart.policy.section import PositiveS, Section
from stalwart.remote.config import RemoteConfig


class MemoryTierConfig(Section):
    """A checkpoint tier in memory (tmpfs): survives the trainer's death, not the machine's.

    Each save is committed there first (the same manifest, digests and atomic commit as on
    disk) on its own, shorter interval; the disk tier is written from the same snapshot on
    the durable interval. A crash, OOM, hang or infra error relaunched on this host resumes
    from memory; after a reboot the tier is gone and the resume comes from disk.
    """

    enabled: bool = False
    """Keep the newest checkpoint in memory too (STALWART_MEMORY_DIR for the trainer)."""
    dir: Path | None = None
    """Where the tiers of all jobs live; default /dev/shm/stalwart (must be a tmpfs to be
    fast; a job's own tier is `<dir>/<name>-<hash of state_dir>`)."""
    max_memory_fraction: float = Field(default=0.25, gt=0.0, le=0.9)
    """A snapshot that would take more than this share of available memory is not kept in
    memory (warned, with the figures); the save goes to disk alone."""
    min_interval_s: PositiveS = 0.1
    """Shortest memory-tier interval advised."""
    fixed_interval_s: PositiveS = 10.0
    """Memory-tier interval until its first save has been measured."""

    def interval_config(self, durable: IntervalConfig) -> IntervalConfig:
        """The memory tier's interval model: the durable one's, with this tier's bounds."""
        return durable.model_copy(
            update={
                "min_interval_s": self.min_interval_s,
                "fixed_interval_s": min(self.fixed_interval_s, durable.fixed_interval_s),
                "max_interval_s": durable.max_interval_s,
            }
        )


class CheckpointConfig(Section):
    """Where the trainer writes checkpoints."""

    dir: Path | None = None
    """Checkpoint directory (STALWART_CKPT_DIR); default `<state_dir>/checkpoints`."""
    keep_last: int = Field(default=3, ge=1)
    """Verified checkpoints kept (the newest verified one is never deleted)."""
    keep_every_steps: int | None = Field(default=None, gt=0)
    """Also keep every checkpoint whose step is a multiple of this (milestones)."""
    pinned: list[str] = []
    """Checkpoint names never pruned."""
    min_free_bytes: int = Field(default=0, ge=0)
    """Prune oldest eligible checkpoints (and warn) when free space falls below this."""
    foreign_globs: list[str] = []
    """Top-level names of checkpoints written without stalwart (e.g. 'model_*.pt'). Empty:
    the known layouts are found on their own (Lightning *.ckpt, HF checkpoint-N, DCP)."""
    adopt_foreign: bool = True
    """Write a manifest beside a stable, format-valid foreign checkpoint, so it verifies fully."""
    observe: bool = True
    """Watch the directory (watchdog) to measure save cost of trainers that do not report it."""
    quiescence_s: PositiveS = 2.0
    """A foreign write is finished after this long without file events."""
    remote: RemoteConfig = RemoteConfig()
    """A durable copy in object storage (spot instances): `url` enables it."""
    interval: IntervalConfig = IntervalConfig()
    """How often the trainer is advised to save: adaptive (Young/Daly) or fixed."""
    memory: MemoryTierConfig = MemoryTierConfig()
    """A second, faster tier in memory for failures that leave the machine standing."""
    recompute_every_s: PositiveS = 60.0
    """The advice is recomputed on each measurement and at least this often."""
    keep_best: int = Field(default=0, ge=0)
    """Also keep this many verified checkpoints with the best `best_metric` (0: off)."""
    best_metric: str | None = None
    """Metric recorded in the manifests' meta that ranks checkpoints (e.g. 'val_loss')."""
    best_mode: Literal["min", "max"] = "min"
    """min: lower `best_metric` is better (a loss); max: higher is better (an accuracy)."""

    @model_validator(mode="after")
    def _best_needs_metric(self) -> CheckpointConfig:
        if self.keep_best and not self.best_metric:
            raise ValueError("keep_best needs best_metric (the metric that ranks checkpoints)")
        return self
