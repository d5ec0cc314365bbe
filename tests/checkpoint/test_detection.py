"""Framework checkpoints found with `checkpoint.foreign_globs` unset (detection.py): real
Lightning, Hugging Face and DCP layouts on disk, and the look-alikes that are only reported."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stalwart.checkpoint import (
    CheckpointState,
    MemoryVerifyCache,
    RetentionPolicy,
    apply_retention,
    list_checkpoints,
    plan_retention,
    prepare_resume,
    retention_items,
)
from stalwart.checkpoint.detection import Detected, detect
from stalwart.checkpoint.foreign import ForeignFormat
from stalwart.checkpoint.frameworks import RepairKind, repair_for_resume
from stalwart.checkpoint.layout import QUARANTINE_DIR, matches_foreign, scan
from tests.checkpoint.foreign import dcp_dir, hf_checkpoint, lightning_ckpt, safetensors_file
from tests.checkpoint.helpers import save, truncate
from tests.supervised import stalwart_argv


def _lightning_dir(root: Path) -> dict[int, Path]:
    root.mkdir(exist_ok=True)
    files = {s: lightning_ckpt(root / f"epoch=0-step={s}.ckpt", step=s) for s in (5, 10)}
    shutil.copyfile(files[10], root / "last.ckpt")
    return files


def _hf_output_dir(root: Path, steps: tuple[int, ...] = (100, 200)) -> None:
    """A Trainer's output_dir: checkpoint-N/ beside the files it writes at the top."""
    root.mkdir()
    for step in steps:
        hf_checkpoint(root / f"checkpoint-{step}", step=step)
    (root / "runs").mkdir()
    (root / "runs" / "events.out.tfevents.1").write_bytes(b"\x00" * 64)
    (root / "config.json").write_text('{"model_type": "tiny"}')
    safetensors_file(root / "model.safetensors")


def _lookalikes(root: Path) -> None:
    notes = root / "checkpoint-notes"
    notes.mkdir()
    (notes / "todo.md").write_text("try a lower lr\n")
    (notes / "broken.bin").write_bytes(b"not a zip at all")
    (root / "notes.ckpt").write_text("tensorflow-style notes, not a torch.save zip\n")


def test_names_alone_say_lightning_and_hf_and_look_alikes() -> None:
    assert detect("epoch=1-step=300.ckpt") is Detected.CHECKPOINT
    assert detect("last.ckpt") is Detected.CHECKPOINT
    assert detect("checkpoint-200") is Detected.CHECKPOINT
    assert detect("checkpoint-notes") is Detected.LOOKALIKE
    assert detect("checkpoint_best") is Detected.LOOKALIKE
    for other in ("runs", "config.json", "model.safetensors", ".last.ckpt.restore-1"):
        assert detect(other) is None
    assert matches_foreign("checkpoint-5", ())
    assert not matches_foreign("checkpoint-5", ("*.ckpt",))  # globs narrow, as before
    assert not matches_foreign("last.ckpt.MANIFEST.json", ())


def test_lightning_checkpoints_and_the_last_ckpt_alias_without_globs(tmp_path: Path) -> None:
    files = _lightning_dir(tmp_path)
    listing = scan(tmp_path)
    assert {e.name for e in listing.foreign} == {*(p.name for p in files.values()), "last.ckpt"}
    infos = {i.name: i for i in list_checkpoints(tmp_path, full=True)}
    assert all(i.state is CheckpointState.INTACT for i in infos.values())
    assert infos["epoch=0-step=10.ckpt"].format is ForeignFormat.LIGHTNING

    truncate(tmp_path / "last.ckpt")  # torn: the alias Lightning resumes from
    [repair] = repair_for_resume(tmp_path, ())
    assert repair.kind is RepairKind.ALIAS_RESTORED and repair.source == files[10]
    assert (tmp_path / "last.ckpt").read_bytes() == files[10].read_bytes()


def test_a_linked_last_ckpt_is_an_alias_without_globs(tmp_path: Path) -> None:
    files = _lightning_dir(tmp_path)
    (tmp_path / "last.ckpt").unlink()
    os.symlink(files[10].name, tmp_path / "last.ckpt")
    infos = {i.name: i for i in list_checkpoints(tmp_path, full=True)}
    assert "alias of epoch=0-step=10.ckpt" in infos["last.ckpt"].reason
    truncate(files[10])
    [repair] = repair_for_resume(tmp_path, ())
    assert repair.kind is RepairKind.ALIAS_RELINKED
    assert os.readlink(tmp_path / "last.ckpt") == files[5].name


def test_torn_hf_checkpoint_is_quarantined_and_the_previous_one_resumed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _hf_output_dir(out)
    truncate(out / "checkpoint-200" / "optimizer.pt")
    assert {e.name for e in scan(out).foreign} == {"checkpoint-100", "checkpoint-200"}

    decision = prepare_resume(out, cache=MemoryVerifyCache())

    assert decision.resume_from is not None and decision.resume_from.name == "checkpoint-100"
    assert decision.resume_from.format is ForeignFormat.HF_CHECKPOINT
    [moved] = decision.quarantined
    assert moved.name == "checkpoint-200" and not (out / "checkpoint-200").exists()
    for untouched in ("runs", "config.json", "model.safetensors"):
        assert (out / untouched).exists()


def test_a_dcp_directory_is_found_by_its_metadata(tmp_path: Path) -> None:
    dcp_dir(tmp_path / "sharded")
    (tmp_path / "plain").mkdir()
    listing = scan(tmp_path)
    assert [e.name for e in listing.foreign] == ["sharded"]
    [info] = list_checkpoints(tmp_path, full=True)
    assert info.state is CheckpointState.INTACT and info.format is ForeignFormat.DCP
    assert matches_foreign("sharded", (), tmp_path / "sharded")
    assert not matches_foreign("plain", (), tmp_path / "plain")


def test_look_alikes_are_reported_never_quarantined_or_pruned(tmp_path: Path) -> None:
    _lightning_dir(tmp_path)
    save(tmp_path, 20)
    _lookalikes(tmp_path)
    for old in ("checkpoint-notes", "notes.ckpt"):  # older than all: retention's first pick
        os.utime(tmp_path / old, (1_000_000, 1_000_000))
    before = {p.name for p in tmp_path.iterdir()}

    infos = {i.name: i for i in list_checkpoints(tmp_path, full=True)}
    for name in ("checkpoint-notes", "notes.ckpt"):
        assert not infos[name].recognized, name
        assert infos[name].state is CheckpointState.UNVERIFIED
    assert "not checkpoint-<step>" in infos["checkpoint-notes"].reason
    assert "not a zip" in infos["notes.ckpt"].reason

    decision = prepare_resume(tmp_path, cache=MemoryVerifyCache())
    assert decision.resume_from is not None and decision.resume_from.name == "step-000000020"
    assert decision.quarantined == ()
    plan = plan_retention(retention_items(infos.values()), RetentionPolicy(keep_last=1))
    assert {i.name for i in plan.delete} >= {"epoch=0-step=5.ckpt"}  # retention does run
    assert not {i.name for i in plan.delete} & {"checkpoint-notes", "notes.ckpt"}
    apply_retention(tmp_path, plan)
    assert (tmp_path / "checkpoint-notes" / "broken.bin").exists()
    assert (tmp_path / "notes.ckpt").exists()
    assert not (tmp_path / QUARANTINE_DIR).exists()
    assert before - {i.name for i in plan.delete} <= {p.name for p in tmp_path.iterdir()}


def test_a_non_zip_ckpt_is_left_alone_even_when_a_glob_names_it(tmp_path: Path) -> None:
    _lightning_dir(tmp_path)
    _lookalikes(tmp_path)
    decision = prepare_resume(tmp_path, foreign_globs=("*.ckpt", "checkpoint-*"))
    assert decision.resume_from is not None
    assert "notes.ckpt" not in {q.name for q in decision.quarantined}
    assert (tmp_path / "notes.ckpt").exists()


def test_globs_narrow_the_search(tmp_path: Path) -> None:
    _lightning_dir(tmp_path)
    hf_checkpoint(tmp_path / "checkpoint-7", step=7)
    _lookalikes(tmp_path)
    listing = scan(tmp_path, ("epoch=*.ckpt",))
    assert {e.name for e in listing.foreign} == {"epoch=0-step=5.ckpt", "epoch=0-step=10.ckpt"}
    assert listing.lookalikes == ()


def test_verify_full_reports_a_torn_hf_checkpoint_with_no_configuration(tmp_path: Path) -> None:
    """As a new user would try it on a Trainer output directory."""
    out = tmp_path / "out"
    _hf_output_dir(out)
    truncate(out / "checkpoint-200" / "model-00002-of-00002.safetensors")
    (out / "checkpoint-notes").mkdir()

    found = subprocess.run(
        stalwart_argv("checkpoints", "verify", "--full", "--dir", str(out)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert found.returncode == 1, found.stdout + found.stderr
    # Columns: tier, name, step, ...
    rows = {line.split()[1]: line for line in found.stdout.splitlines() if len(line.split()) > 1}
    assert "corrupt" in rows["checkpoint-200"]
    assert "intact" in rows["checkpoint-100"]
    assert "unverified" in rows["checkpoint-notes"]
    assert "1 corrupt" in found.stdout
    assert (out / "checkpoint-200").is_dir()  # verify only reports
