"""Failure processes for the simulator: failure times in wall seconds from a job's start.

Poisson (constant rate); Weibull renewal (shape < 1: failures cluster, as
measured on real clusters); a rate that steps or ramps mid-run; a recorded
trace of failure times replayed cyclically; and a cluster of nodes failing
independently, any one of which interrupts the whole job. Each also says its
true MTBF at any moment, which is what the simulator's oracle is allowed to know.

`PublishedInterruptions` holds a published interruption count, from which the
cluster, GPU and node MTBF follow; `LLAMA3_405B` is Meta's for Llama 3.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _check_mtbf(name: str, value_s: float) -> None:
    if not (math.isfinite(value_s) and value_s > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value_s!r}")


class FailureProcess(abc.ABC):
    """Failure times in wall seconds from the job's start."""

    @abc.abstractmethod
    def times(self, rng: random.Random) -> Iterator[float]:
        """An endless increasing sequence of failure times."""

    @abc.abstractmethod
    def mtbf_at_s(self, now_s: float) -> float:
        """The true mean time between failures at `now_s` (what the oracle knows)."""

    @property
    def constant(self) -> bool:
        """Whether `mtbf_at_s` never changes."""
        return True


@dataclass(frozen=True)
class PoissonFailures(FailureProcess):
    mtbf_s: float

    def __post_init__(self) -> None:
        _check_mtbf("mtbf_s", self.mtbf_s)

    def times(self, rng: random.Random) -> Iterator[float]:
        now_s = 0.0
        while True:
            now_s += rng.expovariate(1.0 / self.mtbf_s)
            yield now_s

    def mtbf_at_s(self, now_s: float) -> float:
        return self.mtbf_s


def cluster_mtbf_s(node_mtbf_s: float, nodes: int) -> float:
    """The MTBF of a job that a failure of any one of `nodes` independent nodes interrupts.

    The failure rates add: N nodes of MTBF M fail together at rate N / M.
    """
    _check_mtbf("node_mtbf_s", node_mtbf_s)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a whole number >= 1, got {nodes!r}")
    return node_mtbf_s / nodes


@dataclass(frozen=True)
class ClusterFailures(FailureProcess):
    """`nodes` nodes, each failing as a Poisson process of mean `node_mtbf_s`, independently;
    any failure interrupts the whole job (synchronous training). The superposition of
    independent Poisson processes is Poisson at the summed rate, drawn as such."""

    node_mtbf_s: float
    nodes: int

    def __post_init__(self) -> None:
        cluster_mtbf_s(self.node_mtbf_s, self.nodes)

    @property
    def mtbf_s(self) -> float:
        """The cluster's MTBF: node MTBF / nodes."""
        return cluster_mtbf_s(self.node_mtbf_s, self.nodes)

    def times(self, rng: random.Random) -> Iterator[float]:
        return PoissonFailures(self.mtbf_s).times(rng)

    def mtbf_at_s(self, now_s: float) -> float:
        return self.mtbf_s


@dataclass(frozen=True)
class PublishedInterruptions:
    """A published count of job interruptions on a cluster over a period, and its source."""

    interruptions: int
    days: float
    gpus: int
    gpus_per_node: int
    source: str
    """Who reported it, where."""
    note: str = ""
    """What the count includes."""

    @property
    def cluster_mtbf_s(self) -> float:
        return self.days * 86400.0 / self.interruptions

    @property
    def gpu_mtbf_s(self) -> float:
        """Per GPU: the cluster's rate shared out evenly over its GPUs."""
        return self.cluster_mtbf_s * self.gpus

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def node_mtbf_s(self) -> float:
        return self.cluster_mtbf_s * self.nodes


LLAMA3_405B = PublishedInterruptions(
    interruptions=466,
    days=54.0,
    gpus=16_384,
    gpus_per_node=8,
    source='Meta, "The Llama 3 Herd of Models" (2024, arXiv:2407.21783)',
    note="419 unexpected, about 78% of them hardware, and 47 planned; H100s, 8 per server",
)
"""Llama 3 405B pre-training: one interruption every 2.78 h on 2,048 nodes. All 466
count: a planned interruption stops the job as well (unexpected ones only: 3.09 h)."""


@dataclass(frozen=True)
class WeibullFailures(FailureProcess):
    """A renewal process with Weibull gaps (shape < 1: failures cluster), mean `mtbf_s`."""

    mtbf_s: float
    shape: float

    def __post_init__(self) -> None:
        _check_mtbf("mtbf_s", self.mtbf_s)
        if not (math.isfinite(self.shape) and self.shape > 0):
            raise ValueError(f"shape must be > 0, got {self.shape!r}")

    def times(self, rng: random.Random) -> Iterator[float]:
        scale_s = self.mtbf_s / math.gamma(1.0 + 1.0 / self.shape)
        now_s = 0.0
        while True:
            now_s += rng.weibullvariate(scale_s, self.shape)
            yield now_s

    def mtbf_at_s(self, now_s: float) -> float:
        return self.mtbf_s


@dataclass(frozen=True)
class DriftFailures(FailureProcess):
    """Poisson at `mtbf_s`, then from `change_at_s` the rate moves linearly over
    `ramp_s` (0: a step) to that of `mtbf_after_s`. Drawn by thinning."""

    mtbf_s: float
    mtbf_after_s: float
    change_at_s: float
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        _check_mtbf("mtbf_s", self.mtbf_s)
        _check_mtbf("mtbf_after_s", self.mtbf_after_s)
        if not (self.change_at_s >= 0 and self.ramp_s >= 0):
            raise ValueError("change_at_s and ramp_s must be >= 0")

    def _rate_per_s(self, now_s: float) -> float:
        before, after = 1.0 / self.mtbf_s, 1.0 / self.mtbf_after_s
        if now_s < self.change_at_s:
            return before
        if self.ramp_s <= 0 or now_s >= self.change_at_s + self.ramp_s:
            return after
        return before + (after - before) * (now_s - self.change_at_s) / self.ramp_s

    def times(self, rng: random.Random) -> Iterator[float]:
        peak = max(1.0 / self.mtbf_s, 1.0 / self.mtbf_after_s)
        now_s = 0.0
        while True:
            now_s += rng.expovariate(peak)
            if rng.random() * peak < self._rate_per_s(now_s):
                yield now_s

    def mtbf_at_s(self, now_s: float) -> float:
        return 1.0 / self._rate_per_s(now_s)

    @property
    def constant(self) -> bool:
        return False


@dataclass(frozen=True)
class TraceFailures(FailureProcess):
    """Recorded failure times, replayed as their gaps, cyclically, from a random gap."""

    times_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times_s:
            raise ValueError("a trace needs at least one failure time")
        if any(b < a for a, b in zip(self.times_s, self.times_s[1:], strict=False)):
            raise ValueError("failure times must be in increasing order")
        if self.times_s[0] < 0 or self.times_s[-1] <= 0:
            raise ValueError("failure times must be >= 0 and not all 0")

    @property
    def gaps_s(self) -> tuple[float, ...]:
        return tuple(b - a for a, b in zip((0.0, *self.times_s), self.times_s, strict=False))

    def times(self, rng: random.Random) -> Iterator[float]:
        gaps_s = self.gaps_s
        index = rng.randrange(len(gaps_s))
        now_s = 0.0
        while True:
            now_s += gaps_s[index]
            index = (index + 1) % len(gaps_s)
            yield now_s

    def mtbf_at_s(self, now_s: float) -> float:
        return self.times_s[-1] / len(self.times_s)


def load_trace(path: Path) -> TraceFailures:
    """Failure times, one float (seconds) per line; blank lines and `#` comments skipped."""
    times_s: list[float] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}:{number}: failure time must be >= 0, got {text!r}")
        times_s.append(value)
    if not times_s:
        raise ValueError(f"{path}: no failure times in the file")
    return TraceFailures(tuple(sorted(times_s)))
