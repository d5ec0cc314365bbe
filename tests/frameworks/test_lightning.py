"""Lightning under the real supervisor: an unmodified script survives chaos kills and a torn
last.ckpt; the one-line callback saves at the advised interval, records metrics, drains."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path

import pytest

from stalwart.channels import control_socket as control
from stalwart.journal import Journal
from tests.conftest import wait_for
from tests.frameworks.helpers import EXAMPLES, HERE, TIMEOUT_S, cli, records, run, start, starts

pytestmark = pytest.mark.slow

GLOBS = "checkpoint.foreign_globs=['*.ckpt']"


def test_unmodified_script_survives_chaos_and_a_torn_last_ckpt(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """Needs `repair_for_resume` wired into the keeper: without it the torn last.ckpt is
    quarantined and Lightning silently starts the next attempt from step 0. No
    `foreign_globs`: the *.ckpt files are found on their own."""
    record = tmp_path / "run.jsonl"
    result = run(
        tmp_path,
        runtime_dir,
        [
            "--chaos",
            "--set", "chaos.kill_after_min_s=1",
            "--set", "chaos.kill_after_max_s=3",
            "--set", "chaos.max_kills=1",
            "--set", "chaos.seed=11",
        ],
        [
            str(HERE / "lit_plain.py"),
            "--dir", str(tmp_path / "ck"),
            "--steps", "40",
            "--every", "5",
            "--record", str(record),
            "--tear-at", "20",
        ],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    events = records(record)
    assert events[-1]["event"] == "end" and events[-1]["step"] == 40
    [tore] = [i for i, r in enumerate(events) if r["event"] == "tore"]
    assert events[tore]["step"] == 20
    after = [r["step"] for r in events[tore:] if r["event"] == "start"]
    assert after[0] == 20, f"resumed from step {after[0]} after last.ckpt was torn at 20"
    assert starts(record) == sorted(starts(record)), "an attempt went back in training"
    assert "alias restored: last.ckpt" in result.stderr
    [kept] = (tmp_path / "ck" / ".quarantine").glob("last.ckpt-invalid*")
    assert (kept / "last.ckpt").stat().st_size < (tmp_path / "ck" / "last.ckpt").stat().st_size
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
    assert sum("injected by chaos" in (a.reason or "") for a in attempts) == 1
    assert attempts[-1].kind == "COMPLETED"


def test_callback_saves_at_the_advised_interval_records_metrics_and_drains(
    tmp_path: Path, runtime_dir: Path
) -> None:
    interval_s = 1.0
    ck = tmp_path / "ck"
    proc = start(
        tmp_path,
        runtime_dir,
        [
            "--set", GLOBS,
            "--set", "checkpoint.interval.mode=fixed",
            "--set", f"checkpoint.interval.fixed_interval_s={interval_s}",
        ],
        [
            str(EXAMPLES / "lightning_train.py"),
            "--dir", str(ck),
            "--steps", "100000",
            "--every", "100000",  # the script's own cadence: never, within this test
            "--batches", "10",
            "--step-s", "0.02",
        ],
    )  # fmt: skip
    try:
        wait_for(
            lambda: len(list(ck.glob("epoch=*.ckpt.MANIFEST.json"))) >= 3,
            TIMEOUT_S - 20,
            "three saves at the advised interval",
        )
        third = max(int(p.name.split("step=")[1].split(".")[0]) for p in ck.glob("epoch=*.ckpt"))
        wait_for(lambda: _step(runtime_dir) >= third + 3, 10, "training past the third save")
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        saves = [c for c in journal.checkpoints("default") if c.source == "trainer"]
        [attempt] = journal.attempts()
    assert attempt.exit_code == 0 and attempt.kind == "STOPPED"
    assert all(c.stall_s is not None and c.size_bytes for c in saves)
    periodic = saves[:3]  # all saved before the stop request
    gaps = [b.reported_unix - a.reported_unix for a, b in itertools.pairwise(periodic)]
    assert min(gaps) >= 0.75 * interval_s, gaps
    # The drain saved once more, through Lightning's own ModelCheckpoint, then exited 0:
    # nothing trained after the final checkpoint.
    final = saves[-1]
    assert final.step is not None and final.step >= third + 3
    assert attempt.last_step is not None and final.step >= attempt.last_step
    assert final.path is not None and Path(final.path).name.endswith(f"-step={final.step}.ckpt")
    manifest = json.loads(Path(final.path + ".MANIFEST.json").read_text())
    assert manifest["meta"]["framework"] == "lightning"
    assert set(manifest["meta"]["metrics"]) >= {"train_loss", "val_loss"}
    assert (ck / "last.ckpt").is_file()
    _best_skips_a_corrupt_checkpoint(ck)


def _step(runtime_dir: Path) -> int:
    """The trainer's step, from the supervisor's status (its heartbeats)."""
    try:
        status = control.request(runtime_dir / "stalwart" / "default" / "control.sock", "status")
    except (OSError, ValueError):
        return 0
    return int(status.get("step") or 0)


def _val_loss(path: Path) -> float | None:
    manifest = path.with_name(path.name + ".MANIFEST.json")
    if not manifest.exists():
        return None
    value = json.loads(manifest.read_text())["meta"].get("metrics", {}).get("val_loss")
    return None if value is None else float(value)


def _best_skips_a_corrupt_checkpoint(ck: Path) -> None:
    def best() -> Path:
        found = cli(
            "checkpoints", "best", "--dir", str(ck), "--glob", "*.ckpt", "--metric", "val_loss"
        )
        assert found.returncode == 0, found.stderr
        return Path(found.stdout.strip())

    first = best()
    recorded = [v for v in map(_val_loss, ck.glob("*.ckpt")) if v is not None]
    assert _val_loss(first) == min(recorded)
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    second = best()
    assert second != first
    assert (_val_loss(second) or 0.0) >= (_val_loss(first) or 0.0)
    listing = cli("checkpoints", "list", "--dir", str(ck), "--glob", "*.ckpt")
    assert "val_loss=" in listing.stdout
