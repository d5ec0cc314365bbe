"""Foreign checkpoints: accepted when valid, rejected with a reason when broken or hostile."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from stalwart.checkpoint import (
    Defect,
    ForeignFormat,
    FormatStatus,
    QuarantineReason,
    check_foreign,
    prepare_resume,
)
from tests.checkpoint.foreign import (
    dcp_dir,
    hf_checkpoint,
    lightning_ckpt,
    safetensors_file,
    torch_pt,
)
from tests.checkpoint.helpers import flip_byte, truncate

HOSTILE_CHECKER = Path(__file__).with_name("hostile_check.py")
MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("build", "name", "fmt", "step"),
    [
        (torch_pt, "model_100.pt", ForeignFormat.TORCH_ZIP, 100),
        (lightning_ckpt, "epoch=1-step=300.ckpt", ForeignFormat.LIGHTNING, 300),
        (safetensors_file, "model.safetensors", ForeignFormat.SAFETENSORS, None),
        (hf_checkpoint, "checkpoint-500", ForeignFormat.HF_CHECKPOINT, 500),
        (dcp_dir, "dcp-step-7", ForeignFormat.DCP, 7),
    ],
)
def test_valid_foreign_checkpoints_are_accepted(
    tmp_path: Path, build: object, name: str, fmt: ForeignFormat, step: int | None
) -> None:
    path = build(tmp_path / name)  # type: ignore[operator]
    verdict = check_foreign(path)
    assert verdict.status is FormatStatus.VALID, verdict.reason
    assert verdict.format is fmt
    assert verdict.step == step
    assert verdict.size_bytes > 0


def test_torch_zip_damage_is_found(tmp_path: Path) -> None:
    flipped = torch_pt(tmp_path / "flipped.pt")
    info = next(i for i in zipfile.ZipFile(flipped).infolist() if i.filename.endswith("data/0"))
    flip_byte(flipped, offset=info.header_offset + 30 + len(info.filename) + 64 + 100)
    assert check_foreign(flipped, full=False).status is FormatStatus.VALID  # structure only
    verdict = check_foreign(flipped, full=True)
    assert verdict.status is FormatStatus.INVALID
    assert "CRC mismatch" in verdict.reason

    truncated = torch_pt(tmp_path / "truncated.pt")
    truncate(truncated)
    assert check_foreign(truncated).status is FormatStatus.INVALID


def test_safetensors_truncation_is_found(tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "m.safetensors")
    os.truncate(path, path.stat().st_size - 1)
    verdict = check_foreign(path)
    assert verdict.status is FormatStatus.INVALID
    assert "truncated or extended" in verdict.reason


def test_dcp_without_metadata_or_shard_is_invalid(tmp_path: Path) -> None:
    no_meta = dcp_dir(tmp_path / "a")
    (no_meta / ".metadata").unlink()
    assert check_foreign(no_meta).status is not FormatStatus.VALID

    no_shard = dcp_dir(tmp_path / "b")
    for shard in no_shard.glob("*.distcp"):
        shard.unlink()
    verdict = check_foreign(no_shard)
    assert verdict.status is FormatStatus.INVALID
    assert verdict.problem is not None and verdict.problem.defect is Defect.FILE_MISSING

    cut = dcp_dir(tmp_path / "c")
    os.truncate(cut / ".metadata", (cut / ".metadata").stat().st_size - 1)
    assert check_foreign(cut).status is FormatStatus.INVALID


def test_incomplete_hf_checkpoint_is_invalid(tmp_path: Path) -> None:
    no_state = hf_checkpoint(tmp_path / "checkpoint-500")
    (no_state / "trainer_state.json").unlink()
    verdict = check_foreign(no_state)
    assert verdict.status is FormatStatus.INVALID
    assert "trainer_state.json" in verdict.reason

    bad_optimizer = hf_checkpoint(tmp_path / "checkpoint-600")
    truncate(bad_optimizer / "optimizer.pt")
    verdict = check_foreign(bad_optimizer)
    assert verdict.status is FormatStatus.INVALID
    assert verdict.problem is not None and verdict.problem.file == "optimizer.pt"


def test_unknown_files_are_unrecognized_not_corrupt(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert check_foreign(tmp_path / "notes.txt").status is FormatStatus.UNRECOGNIZED


def test_discovery_falls_back_over_broken_foreign_checkpoints(tmp_path: Path) -> None:
    lightning_ckpt(tmp_path / "epoch=0-step=100.ckpt", step=100)
    newest = lightning_ckpt(tmp_path / "epoch=1-step=200.ckpt", step=200)
    truncate(newest)
    (tmp_path / "tensorboard").mkdir()  # matched by the glob, not a checkpoint: left alone
    decision = prepare_resume(tmp_path, foreign_globs=("*.ckpt", "tensorboard"))
    assert decision.resume_from is not None
    assert decision.resume_from.name == "epoch=0-step=100.ckpt"
    [moved] = decision.quarantined
    assert moved.reason is QuarantineReason.INVALID
    assert moved.destination.name == "epoch=1-step=200.ckpt-invalid"
    assert (moved.destination / "epoch=1-step=200.ckpt").is_file()
    assert (tmp_path / "tensorboard").is_dir()


# -- hostile input ----------------------------------------------------------------------


def _zip(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _patch_eocd(path: Path, **fields: int) -> Path:
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    names = ["sig", "disk", "cd_disk", "entries_here", "entries", "cd_size", "cd_offset", "comment"]
    values = dict(zip(names, struct.unpack_from("<4sHHHHIIH", data, at), strict=True))
    values.update(fields)
    struct.pack_into("<4sHHHHIIH", data, at, *values.values())
    path.write_bytes(bytes(data))
    return path


def _zip64_bomb(path: Path, claimed_entries: int) -> Path:
    """A zip whose zip64 end record claims `claimed_entries` entries."""
    body = _zip(path, {"m/data.pkl": b"\x80\x02."}).read_bytes()
    eocd_at = body.rfind(b"PK\x05\x06")
    _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", body, eocd_at)
    head = body[:eocd_at]
    z64_at = len(head)
    record = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0,
        claimed_entries, claimed_entries, cd_size, cd_offset,
    )  # fmt: skip
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_at, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(head + record + locator + eocd)
    return path


def _safetensors_raw(path: Path, header_len: int, rest: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", header_len) + rest)
    return path


def _max_size_header(limit_bytes: int) -> bytes:
    """A header of the grammar at the size limit, full of minimal tensor entries (worst case)."""
    parts: list[bytes] = []
    used = 2
    index = 0
    while True:
        entry = b'"%x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}' % index
        if used + len(entry) + 1 > limit_bytes:
            break
        parts.append(entry)
        used += len(entry) + 1
        index += 1
    return (b"{" + b",".join(parts) + b"}").ljust(limit_bytes, b" ")


def _hostile_inputs(tmp: Path) -> dict[str, tuple[Path, Defect]]:
    cases: dict[str, tuple[Path, Defect]] = {}
    cases["huge_header_len"] = (
        _safetensors_raw(tmp / "huge.safetensors", 2**63, b"{}"),
        Defect.LIMIT_EXCEEDED,
    )
    cases["header_past_end"] = (
        _safetensors_raw(tmp / "past.safetensors", 10**6, b'{"a":1}'),
        Defect.FORMAT_INVALID,
    )
    nested = b"[" * (2 * MIB - 16)
    cases["deeply_nested_header"] = (
        _safetensors_raw(tmp / "nested.safetensors", len(nested), nested),
        Defect.FORMAT_INVALID,
    )
    worst = _max_size_header(2 * MIB)
    cases["max_size_header"] = (
        _safetensors_raw(tmp / "worst.safetensors", len(worst), worst),
        Defect.FORMAT_INVALID,
    )
    cases["zip64_entry_bomb"] = (_zip64_bomb(tmp / "bomb64.pt", 10**9), Defect.LIMIT_EXCEEDED)
    cases["zip_entry_count"] = (
        _patch_eocd(_zip(tmp / "bomb.pt", {"m/data.pkl": b"x"}), entries=60000, entries_here=60000),
        Defect.LIMIT_EXCEEDED,
    )
    cases["zip_cd_outside"] = (
        _patch_eocd(_zip(tmp / "cd.pt", {"m/data.pkl": b"x"}), cd_offset=10**9),
        Defect.FORMAT_INVALID,
    )
    cases["zip_dotdot"] = (
        _zip(tmp / "dotdot.pt", {"m/data.pkl": b"x", "m/../../../etc/cron.d/x": b"y"}),
        Defect.UNSAFE_PATH,
    )
    cases["zip_deflate_bomb"] = (
        _zip(tmp / "deflate.pt", {"m/data.pkl": bytes(20 * MIB)}, zipfile.ZIP_DEFLATED),
        Defect.FORMAT_INVALID,
    )
    outside = torch_pt(tmp / "outside.pt")
    os.symlink(outside, tmp / "link.pt")
    cases["symlinked_file"] = (tmp / "link.pt", Defect.SYMLINK)
    linked_dir = tmp / "checkpoint-7"
    linked_dir.mkdir()
    os.symlink("/etc/passwd", linked_dir / "model.safetensors")
    cases["symlink_inside"] = (linked_dir, Defect.SYMLINK)
    escape = hf_checkpoint(tmp / "checkpoint-9")
    (escape / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd"}})
    )
    cases["index_dotdot"] = (escape, Defect.UNSAFE_PATH)
    bomb = hf_checkpoint(tmp / "checkpoint-10")
    (bomb / "model.safetensors.index.json").write_bytes(b"[" + b"{}," * (MIB // 3 - 1) + b"0]")
    cases["index_json_bomb"] = (bomb, Defect.FORMAT_INVALID)
    dcp = tmp / "dcp-escape"
    dcp.mkdir()
    (dcp / ".metadata").write_bytes(pickle.dumps({"relative_path": "../x.distcp"}, protocol=4))
    cases["dcp_dotdot"] = (dcp, Defect.UNSAFE_PATH)
    return cases


@pytest.mark.slow
def test_hostile_foreign_checkpoints_are_rejected_in_bounded_time_and_memory(
    tmp_path: Path,
) -> None:
    cases = _hostile_inputs(tmp_path)
    paths = [str(path) for path, _ in cases.values()]
    result = subprocess.run(
        [sys.executable, str(HOSTILE_CHECKER), *paths],
        capture_output=True,
        check=True,
        timeout=50,
    )
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(records) == len(cases)
    for (case, (_path, defect)), record in zip(cases.items(), records, strict=True):
        assert record["status"] == "invalid", (case, record)
        assert record["defect"] == defect.value, (case, record)
        assert record["reason"], case
        assert record["seconds"] < 1.0, (case, record)
        assert record["peak_bytes"] < 64 * MIB, (case, record)
        assert record["rss_growth_bytes"] < 64 * MIB, (case, record)
