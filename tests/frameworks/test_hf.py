"""The Hugging Face Trainer under the real supervisor: an unmodified script survives chaos
kills and incomplete checkpoints; the one-line callback saves at the advised interval,
records metrics and drains."""

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
from tests.frameworks.helpers import EXAMPLES, HERE, TIMEOUT_S, records, run, start, starts

pytestmark = pytest.mark.slow

GLOBS = "checkpoint.foreign_globs=['checkpoint-*']"


def _script(tmp_path: Path, *extra: str) -> list[str]:
    return [
        str(HERE / "hf_plain.py"),
        "--out", str(tmp_path / "ck"),
        "--steps", "25",
        "--save-steps", "5",
        "--record", str(tmp_path / "run.jsonl"),
        *extra,
    ]  # fmt: skip


def _resumed_after_tear(tmp_path: Path) -> tuple[dict[str, object], int]:
    events = records(tmp_path / "run.jsonl")
    assert events[-1]["event"] == "end" and events[-1]["step"] == 25
    [tore] = [i for i, r in enumerate(events) if r["event"] == "tore"]
    after = [r["step"] for r in events[tore:] if r["event"] == "start"]
    assert starts(tmp_path / "run.jsonl") == sorted(starts(tmp_path / "run.jsonl"))
    return events[tore], after[0]


def test_unmodified_script_survives_chaos_and_a_checkpoint_without_trainer_state(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """No `foreign_globs`: the checkpoint-N/ directories are found on their own."""
    result = run(
        tmp_path,
        runtime_dir,
        [
            "--chaos",
            "--set", "chaos.kill_after_min_s=1",
            "--set", "chaos.kill_after_max_s=3",
            "--set", "chaos.max_kills=1",
            "--set", "chaos.seed=5",
        ],
        _script(tmp_path, "--tear", "trainer_state@10"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tore, resumed_at = _resumed_after_tear(tmp_path)
    assert tore["step"] == 10
    assert resumed_at == 5, f"resumed from {resumed_at}, not checkpoint-5"
    [kept] = (tmp_path / "ck" / ".quarantine").glob("checkpoint-10-invalid*")
    assert not (kept / "trainer_state.json").exists()
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
        quarantined = journal.quarantines()
    assert sum("injected by chaos" in (a.reason or "") for a in attempts) == 1
    assert attempts[-1].kind == "COMPLETED"
    assert "checkpoint-10" in {q.name for q in quarantined}


def test_unmodified_script_resumes_over_a_truncated_optimizer_state(
    tmp_path: Path, runtime_dir: Path
) -> None:
    # Declared by glob (narrowing), as before auto-detection.
    result = run(
        tmp_path, runtime_dir, ["--set", GLOBS], _script(tmp_path, "--tear", "optimizer@10")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tore, resumed_at = _resumed_after_tear(tmp_path)
    assert tore["step"] == 10 and resumed_at == 5
    [kept] = (tmp_path / "ck" / ".quarantine").glob("checkpoint-10-*")
    assert "optimizer.pt" in result.stderr
    whole = tmp_path / "ck" / "checkpoint-25" / "optimizer.pt"  # same model, same size
    assert (kept / "optimizer.pt").stat().st_size < whole.stat().st_size


def _step(runtime_dir: Path) -> int:
    try:
        status = control.request(runtime_dir / "stalwart" / "default" / "control.sock", "status")
    except (OSError, ValueError):
        return 0
    return int(status.get("step") or 0)


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
            str(EXAMPLES / "hf_train.py"),
            "--out", str(ck),
            "--steps", "100000",
            "--save-steps", "100000",  # the script's own cadence: never, within this test
            "--eval-steps", "10",
            "--step-s", "0.02",
        ],
    )  # fmt: skip
    try:
        wait_for(
            lambda: len(list(ck.glob("checkpoint-*/MANIFEST.json"))) >= 3,
            TIMEOUT_S - 20,
            "three saves at the advised interval",
        )
        third = max(int(p.name.split("-")[1]) for p in ck.glob("checkpoint-*"))
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
    periodic = saves[:3]
    gaps = [b.reported_unix - a.reported_unix for a, b in itertools.pairwise(periodic)]
    assert min(gaps) >= 0.75 * interval_s, gaps
    final = saves[-1]
    assert final.step is not None and final.step >= third + 3
    assert attempt.last_step is not None and final.step >= attempt.last_step
    assert final.path is not None and Path(final.path).name == f"checkpoint-{final.step}"
    manifest = json.loads((Path(final.path) / "MANIFEST.json").read_text())
    assert manifest["meta"]["framework"] == "hf"
    assert {"loss", "eval_loss"} <= set(manifest["meta"]["metrics"])
    assert not (ck / "final").exists()  # exited at the drain, not after train() returned
