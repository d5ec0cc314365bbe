"""Resource sampling of the trainer's tree (psutil), the cgroup memory limit, disk and GPUs.

The shell half of monitoring: it reads the system and returns plain samples;
what a sample means (e.g. memory at its limit) is decided by pure functions here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    index: int
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float


@dataclass(frozen=True)
class ResourceSample:
    """One look at the trainer's process tree and its surroundings."""

    processes: int
    tree_rss_bytes: int
    tree_cpu_percent: float
    memory_limit_bytes: int
    oom_kills: int | None
    disk_free_bytes: int | None
    gpus: tuple[GpuSample, ...] = ()


def memory_at_limit(sample: ResourceSample | None, fraction: float) -> bool:
    """Was the tree's memory at its limit? (OOM evidence for a later SIGKILL)."""
    if sample is None or sample.memory_limit_bytes <= 0:
        return False
    return sample.tree_rss_bytes >= fraction * sample.memory_limit_bytes


def oom_killed_since(before: ResourceSample | None, after: ResourceSample | None) -> bool:
    """Did the kernel's OOM killer act in our cgroup between two samples?"""
    if before is None or after is None or before.oom_kills is None or after.oom_kills is None:
        return False
    return after.oom_kills > before.oom_kills


def _cgroup_dir(root: Path) -> Path | None:
    """Our cgroup v2 directory, if the unified hierarchy is mounted."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return root / line[3:].lstrip("/")
    except OSError:
        pass
    return None


def tree_pids(root: int, proc: Path = Path("/proc")) -> list[int]:
    """The pid and all its descendants, from /proc/PID/task/TID/children.

    Far cheaper than psutil's children(recursive=True), which reads every process on
    the machine; falls back to it where the kernel lacks the children files.
    """
    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        try:
            tasks = list((proc / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                text = (task / "children").read_text()
            except FileNotFoundError:
                return _psutil_tree(root)
            except OSError:
                continue
            pending.extend(int(child) for child in text.split())
    return found


def _psutil_tree(root: int) -> list[int]:
    try:
        return [root, *(p.pid for p in psutil.Process(root).children(recursive=True))]
    except psutil.Error:
        return [root]


class ResourceSampler:
    """Samples on demand; keeps psutil handles so CPU percentages have a baseline."""

    def __init__(self, ckpt_dir: Path, cgroup_root: Path = Path("/sys/fs/cgroup")) -> None:
        self._ckpt_dir = ckpt_dir
        self._procs: dict[int, psutil.Process] = {}
        self._cgroup = _cgroup_dir(cgroup_root)
        self._nvml: Any = None
        self._nvml_tried = False

    def _memory_limit_bytes(self) -> int:
        total = int(psutil.virtual_memory().total)
        if self._cgroup is None:
            return total
        with contextlib.suppress(OSError, ValueError):
            raw = (self._cgroup / "memory.max").read_text().strip()
            if raw != "max":
                return min(int(raw), total)
        return total

    def _oom_kills(self) -> int | None:
        if self._cgroup is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            for line in (self._cgroup / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return None

    def _gpus(self) -> tuple[GpuSample, ...]:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml  # type: ignore[import-not-found, unused-ignore]

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as exc:  # absent package, no driver, no GPU: all fine
                logger.debug("NVML unavailable: %s", exc)
        if self._nvml is None:
            return ()
        nvml = self._nvml
        samples = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                samples.append(
                    GpuSample(index, int(memory.used), int(memory.total), float(util.gpu))
                )
        except Exception as exc:
            logger.warning("NVML sampling failed: %s", exc)
        return tuple(samples)

    def sample(self, pid: int | None) -> ResourceSample:
        rss = 0
        cpu = 0.0
        seen: dict[int, psutil.Process] = {}
        if pid is not None:
            members = []
            for member_pid in tree_pids(pid):
                try:
                    members.append(self._procs.get(member_pid) or psutil.Process(member_pid))
                except psutil.Error:
                    continue
            for member in members:
                proc = self._procs.get(member.pid, member)
                try:
                    with proc.oneshot():
                        rss += proc.memory_info().rss
                        cpu += proc.cpu_percent(interval=None)
                except psutil.Error:
                    continue
                seen[proc.pid] = proc
        self._procs = seen
        disk_free = None
        with contextlib.suppress(OSError):
            disk_free = int(psutil.disk_usage(str(self._ckpt_dir)).free)
        return ResourceSample(
            processes=len(seen),
            tree_rss_bytes=rss,
            tree_cpu_percent=cpu,
            memory_limit_bytes=self._memory_limit_bytes(),
            oom_kills=self._oom_kills(),
            disk_free_bytes=disk_free,
            gpus=self._gpus(),
        )

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
