"""Framework-aware resume repair (Lightning aliases), HF completeness, and metrics recorded
in manifests: the pieces, without launching a framework."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from stalwart.checkpoint import (
    CheckpointState,
    Defect,
    FormatStatus,
    FsOps,
    MemoryVerifyCache,
    QuarantineReason,
    adopt,
    check_foreign,
    list_checkpoints,
    prepare_resume,
)
from stalwart.checkpoint.frameworks import (
    RepairKind,
    finite_metrics,
    record_metrics,
    repair_for_resume,
)
from stalwart.checkpoint.layout import QUARANTINE_DIR
from tests.checkpoint.foreign import hf_checkpoint, lightning_ckpt
from tests.checkpoint.helpers import import_torch, truncate

GLOBS = ("*.ckpt",)


def _lightning_dir(root: Path, steps: tuple[int, ...] = (5, 10)) -> dict[int, Path]:
    """Top-k files as Lightning names them, and last.ckpt written after the newest."""
    root.mkdir(exist_ok=True)
    files = {s: lightning_ckpt(root / f"epoch=0-step={s}.ckpt", step=s) for s in steps}
    shutil.copyfile(files[max(steps)], root / "last.ckpt")
    return files


def _resume(root: Path) -> str | None:
    decision = prepare_resume(root, foreign_globs=GLOBS, cache=MemoryVerifyCache())
    return decision.resume_from.name if decision.resume_from else None


def test_torn_last_ckpt_is_restored_from_the_newest_intact_checkpoint(tmp_path: Path) -> None:
    files = _lightning_dir(tmp_path)
    adopt(tmp_path / "last.ckpt")  # the supervisor's watcher had adopted it
    truncate(tmp_path / "last.ckpt")

    [repair] = repair_for_resume(tmp_path, GLOBS)

    assert repair.kind is RepairKind.ALIAS_RESTORED and repair.name == "last.ckpt"
    assert repair.source == files[10]
    assert (tmp_path / "last.ckpt").read_bytes() == files[10].read_bytes()
    assert not (tmp_path / "last.ckpt.MANIFEST.json").exists()  # it described the torn one
    assert repair.quarantined is not None
    kept = repair.quarantined.destination
    assert kept == tmp_path / QUARANTINE_DIR / "last.ckpt-invalid"
    assert (kept / "last.ckpt").stat().st_size < files[10].stat().st_size
    assert (kept / "last.ckpt.MANIFEST.json").is_file()
    assert repair.detail.startswith("last.ckpt: ")  # by format, or by the stale manifest
    assert _resume(tmp_path) == "last.ckpt"
    assert repair_for_resume(tmp_path, GLOBS) == []  # idempotent


def test_without_the_repair_lightning_would_find_no_last_checkpoint(tmp_path: Path) -> None:
    """Why quarantine alone is not enough: discovery moves the torn alias away and
    Lightning's `ckpt_path="last"` then has nothing to load and starts from step 0."""
    _lightning_dir(tmp_path)
    truncate(tmp_path / "last.ckpt")
    assert _resume(tmp_path) == "epoch=0-step=10.ckpt"
    assert not list(tmp_path.glob("last*.ckpt"))


def test_torn_newest_top_k_is_skipped_as_a_source(tmp_path: Path) -> None:
    files = _lightning_dir(tmp_path)
    truncate(tmp_path / "last.ckpt")
    truncate(files[10])
    [repair] = repair_for_resume(tmp_path, GLOBS)
    assert repair.source == files[5]
    assert (tmp_path / "last.ckpt").read_bytes() == files[5].read_bytes()
    assert _resume(tmp_path) == "last.ckpt"


def test_nothing_intact_left_sets_the_alias_aside(tmp_path: Path) -> None:
    files = _lightning_dir(tmp_path, steps=(5,))
    truncate(files[5])
    truncate(tmp_path / "last.ckpt")
    [repair] = repair_for_resume(tmp_path, GLOBS)
    assert repair.kind is RepairKind.ALIAS_SET_ASIDE and repair.source is None
    assert not (tmp_path / "last.ckpt").exists()
    assert (tmp_path / QUARANTINE_DIR / "last.ckpt-invalid" / "last.ckpt").is_file()
    assert _resume(tmp_path) is None


def test_intact_or_undeclared_aliases_are_left_alone(tmp_path: Path) -> None:
    _lightning_dir(tmp_path)
    before = os.stat(tmp_path / "last.ckpt").st_mtime_ns
    assert repair_for_resume(tmp_path, GLOBS) == []
    assert os.stat(tmp_path / "last.ckpt").st_mtime_ns == before
    truncate(tmp_path / "last.ckpt")
    assert repair_for_resume(tmp_path, ("epoch=*.ckpt",)) == []  # not a declared checkpoint
    torch = import_torch()  # the legacy (pre-zip) torch.save format cannot be checked unloaded
    torch.save(
        {"w": torch.ones(2)}, tmp_path / "last-v1.ckpt", _use_new_zipfile_serialization=False
    )
    [repair] = repair_for_resume(tmp_path, GLOBS)  # the torn zip, not what it cannot judge
    assert repair.name == "last.ckpt"


def test_a_linked_alias_is_relinked_and_never_quarantined(tmp_path: Path) -> None:
    """`ModelCheckpoint(save_last="link")`: last.ckpt is a symlink to the newest top-k file."""
    files = _lightning_dir(tmp_path)
    (tmp_path / "last.ckpt").unlink()
    os.symlink(files[10].name, tmp_path / "last.ckpt")
    assert repair_for_resume(tmp_path, GLOBS) == []
    infos = {i.name: i for i in list_checkpoints(tmp_path, full=True, foreign_globs=GLOBS)}
    assert infos["last.ckpt"].state is CheckpointState.UNVERIFIED
    assert "alias of epoch=0-step=10.ckpt" in infos["last.ckpt"].reason

    truncate(files[10])
    [repair] = repair_for_resume(tmp_path, GLOBS)
    assert repair.kind is RepairKind.ALIAS_RELINKED and repair.quarantined is None
    assert os.readlink(tmp_path / "last.ckpt") == files[5].name
    assert _resume(tmp_path) == "epoch=0-step=5.ckpt"  # the torn target is quarantined
    assert os.path.islink(tmp_path / "last.ckpt")

    files[5].unlink()  # dangling: nothing intact to point at
    [repair] = repair_for_resume(tmp_path, GLOBS)
    assert repair.kind is RepairKind.ALIAS_SET_ASIDE
    assert not os.path.lexists(tmp_path / "last.ckpt")


def test_a_symlink_out_of_the_directory_is_not_an_alias(tmp_path: Path) -> None:
    outside = lightning_ckpt(tmp_path / "outside.ckpt")
    root = tmp_path / "ck"
    root.mkdir()
    os.symlink(outside, root / "last.ckpt")
    decision = prepare_resume(root, foreign_globs=GLOBS)
    assert decision.resume_from is None
    [moved] = decision.quarantined
    assert moved.name == "last.ckpt" and "symlink" in moved.detail


class CrashBeforeSwap(FsOps):
    """A crash just before the restored copy is renamed over the alias."""

    def replace(self, src: Path, dst: Path) -> None:
        if dst.name == "last.ckpt":
            raise KeyboardInterrupt("power cut")
        super().replace(src, dst)


def test_a_repair_cut_short_leaves_the_torn_alias_to_repair_again(tmp_path: Path) -> None:
    files = _lightning_dir(tmp_path)
    truncate(tmp_path / "last.ckpt")
    with pytest.raises(KeyboardInterrupt):
        repair_for_resume(tmp_path, GLOBS, ops=CrashBeforeSwap())
    assert (tmp_path / "last.ckpt").is_file()  # torn, but there: never no alias
    assert list(tmp_path.glob(".last.ckpt.restore-*"))  # the copy, not yet swapped in
    [repair] = repair_for_resume(tmp_path, GLOBS)
    assert not list(tmp_path.glob(".last.ckpt.restore-*"))
    assert (tmp_path / "last.ckpt").read_bytes() == files[10].read_bytes()
    assert repair.quarantined is not None
    assert repair.quarantined.destination.name == "last.ckpt-invalid.2"


# -- Hugging Face completeness ---------------------------------------------------------


@pytest.mark.parametrize(
    ("remove", "missing"),
    [
        ("scheduler.pt", "scheduler.pt"),
        ("rng_state.pth", "rng_state.pth"),
        ("optimizer.pt", "optimizer.pt"),
        ("model-*", None),
    ],
)
def test_hf_checkpoint_missing_a_file_the_trainer_writes_is_invalid(
    tmp_path: Path, remove: str, missing: str | None
) -> None:
    folder = hf_checkpoint(tmp_path / "checkpoint-500")
    for path in folder.glob(remove):
        path.unlink()
    (folder / "model.safetensors.index.json").unlink()
    verdict = check_foreign(folder)
    assert verdict.status is FormatStatus.INVALID, verdict.reason
    assert verdict.problem is not None and verdict.problem.defect is Defect.FILE_MISSING
    assert verdict.problem.file == missing


def test_hf_checkpoint_saved_with_save_only_model_is_complete(tmp_path: Path) -> None:
    folder = hf_checkpoint(tmp_path / "checkpoint-500")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).unlink()
    assert check_foreign(folder).status is FormatStatus.VALID


def test_incomplete_newest_hf_checkpoint_is_quarantined_for_get_last_checkpoint(
    tmp_path: Path,
) -> None:
    hf_checkpoint(tmp_path / "checkpoint-5", step=5)
    newest = hf_checkpoint(tmp_path / "checkpoint-10", step=10)
    (newest / "rng_state.pth").unlink()
    decision = prepare_resume(tmp_path, foreign_globs=("checkpoint-*",))
    assert decision.resume_from is not None and decision.resume_from.name == "checkpoint-5"
    [moved] = decision.quarantined
    assert moved.reason is QuarantineReason.INVALID and "rng_state.pth" in moved.detail
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-5"]


# -- metrics in manifests --------------------------------------------------------------


def test_finite_metrics_keeps_real_scalars_only() -> None:
    class Scalar:
        def __float__(self) -> float:
            return 0.25

    raw = {"a": 1, "b": 0.5, "c": float("nan"), "d": "x", "e": True, "f": Scalar(), "g": [1]}
    assert finite_metrics(raw) == {"a": 1.0, "b": 0.5, "f": 0.25}


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_metrics_survive_the_watchers_later_adoption(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        path = lightning_ckpt(tmp_path / "epoch=0-step=5.ckpt", step=5)
    else:
        path = hf_checkpoint(tmp_path / "checkpoint-5", step=5)
    adopted = record_metrics(
        path, {"val_loss": 0.5, "bad": float("inf")}, run_id="r", attempt=2, meta={"x": 1}
    )
    assert dict(adopted.manifest.meta)["metrics"] == {"val_loss": 0.5}
    again = adopt(path)  # what the supervisor's directory watcher does once writes settle
    assert again.manifest == adopted.manifest
    document = json.loads(adopted.manifest_path.read_text())
    assert document["meta"]["metrics"] == {"val_loss": 0.5} and document["meta"]["x"] == 1
    assert document["run_id"] == "r" and document["attempt"] == 2


def test_metrics_replace_a_fresh_manifest_written_without_them(tmp_path: Path) -> None:
    path = lightning_ckpt(tmp_path / "epoch=0-step=5.ckpt", step=5)
    adopt(path)  # the watcher got there first
    adopted = record_metrics(path, {"val_loss": 0.5})
    assert dict(adopted.manifest.meta)["metrics"] == {"val_loss": 0.5}
