"""Foreign checkpoints (written without a manifest): recognized and checked by their format.

Files and directories are classified here; the structural checks of each format (zip
central directory and CRCs, safetensors header and offsets, DCP metadata framing and the
shard files it names) are in format_checks.py, with caps on every size and count.
Passing them says a checkpoint is complete and well-formed, not that its numbers are
right: safetensors has no checksum, so only adoption (a manifest with digests) protects
its data from later bit flips.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart.checkpoint.detection import lightning_lookalike
from stalwart.checkpoint.errors import CheckpointInvalid, Defect
from stalwart.checkpoint.format_structure import (
    DEFAULT_LIMITS,
    READ_BYTES,
    FormatLimits,
    Reject,
    Unrecognized,
    check_dcp,
    check_safetensors,
    check_torch_zip,
    load_json,
)
from stalwart.checkpoint.layout import foreign_step
from stalwart.checkpoint.manifest import path_problem
from stalwart.checkpoint.verify import CacheKey

__all__ = ["DEFAULT_LIMITS", "ForeignFormat", "FormatLimits", "FormatStatus", "FormatVerdict"]


class ForeignFormat(enum.Enum):
    TORCH_ZIP = "torch_zip"
    """torch.save (zip format): .pt, .pth, .bin."""
    LIGHTNING = "lightning"
    """PyTorch Lightning .ckpt (torch.save underneath)."""
    SAFETENSORS = "safetensors"
    HF_CHECKPOINT = "hf_checkpoint"
    """Hugging Face Trainer `checkpoint-N/` directory."""
    DCP = "dcp"
    """torch.distributed.checkpoint directory (`.metadata` and `*.distcp`)."""
    FILES_DIR = "files_dir"
    """Any other directory holding checkpoint files of the kinds above."""


class FormatStatus(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    UNRECOGNIZED = "unrecognized"
    """Not a format stalwart can check (never resumed from unless adopted by hand)."""


@dataclass(frozen=True)
class FormatVerdict:
    path: Path
    status: FormatStatus
    format: ForeignFormat | None
    reason: str
    size_bytes: int
    newest_mtime_ns: int
    step: int | None
    problem: CheckpointInvalid | None = None

    @property
    def valid(self) -> bool:
        return self.status is FormatStatus.VALID

    def key(self) -> CacheKey:
        """Cache key of a format check (distinct from the manifest check of the same name)."""
        return CacheKey(self.path.name + "#format", self.newest_mtime_ns, self.size_bytes)


# -- directories --------------------------------------------------------------------------


def _walk(root: Path, limits: FormatLimits) -> list[tuple[str, os.stat_result]]:
    """Every file and directory under `root`; symlinks and special files are refused."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [("", 0)]
    while pending:
        rel, depth = pending.pop()
        if depth > limits.max_dir_depth:
            raise Reject(rel, Defect.LIMIT_EXCEEDED, f"nested deeper than {limits.max_dir_depth}")
        with os.scandir(root / rel if rel else root) as handles:
            for handle in handles:
                child = f"{rel}/{handle.name}" if rel else handle.name
                st = handle.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise Reject(child, Defect.SYMLINK, "symlinks are refused (could point out)")
                if stat.S_ISDIR(st.st_mode):
                    pending.append((child, depth + 1))
                elif not stat.S_ISREG(st.st_mode):
                    raise Reject(child, Defect.NOT_A_FILE, "special files are refused")
                found.append((child, st))
                if len(found) > limits.max_dir_entries:
                    raise Reject(
                        None, Defect.LIMIT_EXCEEDED, f"over {limits.max_dir_entries} entries"
                    )
    return found


_GLOBAL_STEP_RE = re.compile(rb'"global_step"\s*:\s*(\d{1,19})')


def _trainer_state_step(path: Path) -> int | None:
    """`global_step` of a trainer_state.json, and that the file is complete (ends in `}`).

    Scanned, not parsed: its log_history grows all run long (megabytes), and only the
    step and completeness matter here.
    """
    step: int | None = None
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_BYTES):
            window = tail + chunk
            if step is None and (match := _GLOBAL_STEP_RE.search(window)):
                step = int(match.group(1))
            tail = window[-64:]
    if not tail.rstrip().endswith(b"}"):
        raise Reject(path.name, Defect.FORMAT_INVALID, "incomplete JSON (truncated?)")
    return step


def _read_json(path: Path, limits: FormatLimits) -> Any:
    if path.stat().st_size > limits.max_json_bytes:
        raise Reject(path.name, Defect.LIMIT_EXCEEDED, f"over {limits.max_json_bytes} bytes")
    try:
        return load_json(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise Reject(path.name, Defect.FORMAT_INVALID, f"not valid JSON: {exc}") from None


_FILE_CHECKS: dict[str, ForeignFormat] = {
    ".safetensors": ForeignFormat.SAFETENSORS,
    ".pt": ForeignFormat.TORCH_ZIP,
    ".pth": ForeignFormat.TORCH_ZIP,
    ".bin": ForeignFormat.TORCH_ZIP,
    ".ckpt": ForeignFormat.LIGHTNING,
}


def _check_file(path: Path, fmt: ForeignFormat, *, full: bool, limits: FormatLimits) -> None:
    if fmt is ForeignFormat.SAFETENSORS:
        check_safetensors(path, limits=limits)
    else:
        check_torch_zip(path, full=full, limits=limits)


def _check_dir(
    path: Path, entries: list[tuple[str, os.stat_result]], *, full: bool, limits: FormatLimits
) -> tuple[ForeignFormat, int | None]:
    names = {rel for rel, _ in entries}
    if ".metadata" in names:
        check_dcp(path, limits=limits)
        return ForeignFormat.DCP, foreign_step(path.name)
    checked = 0
    for rel, st in entries:
        fmt = _FILE_CHECKS.get(Path(rel).suffix)
        if stat.S_ISDIR(st.st_mode):
            if f"{rel}/.metadata" in names:
                _relabel(rel, functools.partial(check_dcp, path / rel, limits=limits))
                checked += 1
        elif fmt is not None:
            _relabel(rel, functools.partial(_check_file, path / rel, fmt, full=full, limits=limits))
            checked += 1
        elif rel.endswith(".index.json"):
            _check_index(path, rel, names, limits)
    step = foreign_step(path.name)
    if "trainer_state.json" in names:
        step = _trainer_state_step(path / "trainer_state.json")
        _check_hf_complete(entries)
        fmt_dir = ForeignFormat.HF_CHECKPOINT
    elif re.fullmatch(r"checkpoint-\d+", path.name):
        raise Reject(
            "trainer_state.json", Defect.FILE_MISSING, "the Trainer writes it last; save incomplete"
        )
    else:
        fmt_dir = ForeignFormat.FILES_DIR
    if checked == 0:
        raise Unrecognized("no checkpoint files (.safetensors, .pt, .bin, .ckpt, DCP) inside")
    return fmt_dir, step


_HF_OPTIMIZER_RE = re.compile(r"optimizer(?:\.pt|\.bin|_\d+)|global_step\d+")
"""The optimizer state: a file, FSDP's sharded `optimizer_0/`, DeepSpeed's `global_stepN/`."""
_HF_RNG_RE = re.compile(r"rng_state(?:_\d+)?\.pth")
_HF_NOT_WEIGHTS = frozenset(("training_args.bin", "optimizer.bin", "scheduler.pt"))


def _check_hf_complete(entries: list[tuple[str, os.stat_result]]) -> None:
    """A Trainer checkpoint holds what the Trainer writes before trainer_state.json.

    Always model weights (files, a sharded index, or a DCP/DeepSpeed folder); and unless it
    was saved with `save_only_model` (none of them present), the optimizer, the scheduler
    (DeepSpeed keeps it in its folder) and the RNG state. A checkpoint missing one of these
    resumes wrongly, or not at all, so it is not complete.
    """
    names = {rel for rel, _ in entries}
    top = [(rel, st) for rel, st in entries if "/" not in rel]
    deepspeed = any(
        stat.S_ISDIR(st.st_mode) and re.fullmatch(r"global_step\d+", rel) for rel, st in top
    )

    def holds_weights(rel: str, st: os.stat_result) -> bool:
        if _HF_OPTIMIZER_RE.fullmatch(rel) and not deepspeed:
            return False
        if stat.S_ISDIR(st.st_mode):
            return deepspeed or f"{rel}/.metadata" in names
        return Path(rel).suffix in (".safetensors", ".bin") and rel not in _HF_NOT_WEIGHTS

    if not any(holds_weights(rel, st) for rel, st in top):
        raise Reject(None, Defect.FILE_MISSING, "no model weights (.safetensors, .bin)")
    optimizer = any(_HF_OPTIMIZER_RE.fullmatch(rel) for rel, _ in top)
    scheduler = deepspeed or any(rel == "scheduler.pt" for rel, _ in top)
    rng = any(_HF_RNG_RE.fullmatch(rel) for rel, _ in top)
    if not (optimizer or scheduler or rng):
        return  # saved with save_only_model: weights and trainer state only
    for present, file, what in (
        (optimizer, "optimizer.pt", "the optimizer state"),
        (scheduler, "scheduler.pt", "the learning-rate scheduler state"),
        (rng, "rng_state.pth", "the RNG state"),
    ):
        if not present:
            raise Reject(file, Defect.FILE_MISSING, f"{what} is missing; save incomplete")


def _relabel(rel: str, check: Callable[[], None]) -> None:
    """Run a file check, naming the file by its path inside the checkpoint."""
    try:
        check()
    except Reject as reject:
        file = rel if reject.file in (None, Path(rel).name) else f"{rel}/{reject.file}"
        raise Reject(file, reject.defect, reject.detail) from None


def _check_index(path: Path, rel: str, names: set[str], limits: FormatLimits) -> None:
    index = _read_json(path / rel, limits)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise Reject(rel, Defect.FORMAT_INVALID, "no weight_map")
    folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
    for shard in set(weight_map.values()):
        problem = path_problem(shard) if isinstance(shard, str) else "not a string"
        if problem is not None:
            raise Reject(rel, Defect.UNSAFE_PATH, f"shard {shard!r}: {problem}")
        if folder + shard not in names:
            raise Reject(folder + shard, Defect.FILE_MISSING, f"named by {rel}, not found")


def check_foreign(
    path: Path, *, full: bool = True, limits: FormatLimits = DEFAULT_LIMITS
) -> FormatVerdict:
    """Check a foreign checkpoint (file or directory) by its format; never raises for bad input."""
    name = path.name
    size = newest = 0
    fmt: ForeignFormat | None = None
    step = foreign_step(name)
    try:
        st = os.lstat(path)
        size, newest = st.st_size, st.st_mtime_ns
        if stat.S_ISLNK(st.st_mode):
            raise Reject(None, Defect.SYMLINK, "the checkpoint is a symlink (could point out)")
        if stat.S_ISDIR(st.st_mode):
            entries = _walk(path, limits)
            size = sum(s.st_size for _, s in entries if stat.S_ISREG(s.st_mode))
            newest = max([newest, *(s.st_mtime_ns for _, s in entries)])
            fmt, step = _check_dir(path, entries, full=full, limits=limits)
        elif stat.S_ISREG(st.st_mode):
            fmt = _FILE_CHECKS.get(path.suffix)
            with open(path, "rb") as handle:
                head = handle.read(4)
            if fmt is None:
                fmt = ForeignFormat.TORCH_ZIP if head == b"PK\x03\x04" else None
            if fmt is None:
                raise Unrecognized("not a known checkpoint file type")
            if fmt is ForeignFormat.LIGHTNING and lightning_lookalike(head):
                fmt = None
                raise Unrecognized(
                    "a .ckpt that is not a zip, so not Lightning's (torch.save): "
                    "not a checkpoint stalwart can check; left alone"
                )
            _check_file(path, fmt, full=full, limits=limits)
        else:
            raise Reject(None, Defect.NOT_A_FILE, "neither a file nor a directory")
    except Reject as reject:
        problem = CheckpointInvalid(name, reject.file, reject.defect, reject.detail)
        return FormatVerdict(
            path, FormatStatus.INVALID, fmt, problem.reason, size, newest, step, problem
        )
    except Unrecognized as exc:
        return FormatVerdict(path, FormatStatus.UNRECOGNIZED, fmt, str(exc), size, newest, step)
    except OSError as exc:
        problem = CheckpointInvalid(name, None, Defect.UNREADABLE, str(exc))
        return FormatVerdict(
            path, FormatStatus.INVALID, fmt, problem.reason, size, newest, step, problem
        )
    return FormatVerdict(path, FormatStatus.VALID, fmt, "format valid", size, newest, step)
