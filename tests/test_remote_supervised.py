"""The remote copy under the real supervisor: a fresh machine resumes from object storage
(a file:// remote here; tests/remote covers S3 through moto on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.supervised import environment, records, stalwart_argv

TRAINER = """
import json, os, sys, time
from pathlib import Path
from stalwart.checkpoint import CheckpointStore
from stalwart.client import Client
client, store = Client(), CheckpointStore.from_env()
resume = os.environ["STALWART_RESUME_FROM"]
record = {"resume": resume, "files": {}}
if resume:
    record["files"] = {p.name: p.read_text() for p in sorted(Path(resume).iterdir())}
with open(sys.argv[1], "a") as handle:
    handle.write(json.dumps(record) + "\\n")
if resume:
    sys.exit(0)
remote = Path(sys.argv[2])
for step in (1, 2, 3):
    with store.begin(step) as tx:
        tx.write_bytes("state.json", json.dumps({"step": step, "data": "x" * step}).encode())
    client.saved(step, stall_s=0.01, path=store.root / f"step-{step:09d}")
deadline = time.monotonic() + 30
while not (remote / "step-000000003" / "MANIFEST.json").exists():
    if time.monotonic() > deadline:
        sys.exit(9)
    time.sleep(0.05)
"""


def _run(tmp_path: Path, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    remote = tmp_path / "remote"
    return subprocess.run(
        stalwart_argv(
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            "--ckpt-dir",
            str(tmp_path / "ck"),
            "--set",
            f"checkpoint.remote.url=file://{remote}",
            "--",
            sys.executable,
            "-c",
            TRAINER,
            str(tmp_path / "record.jsonl"),
            str(remote),
        ),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_fresh_machine_resumes_from_the_remote_copy(tmp_path: Path, runtime_dir: Path) -> None:
    first = _run(tmp_path, runtime_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step-000000003 durable at" in first.stderr
    original = (tmp_path / "ck" / "step-000000003" / "state.json").read_text()
    listing = subprocess.run(
        stalwart_argv("checkpoints", "list", "--remote", "--state-dir", str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "step-000000003" in listing.stdout
    # A fresh machine: local checkpoints and the state directory are gone.
    shutil.rmtree(tmp_path / "ck")
    shutil.rmtree(tmp_path / "state")
    second = _run(tmp_path, runtime_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restored step-000000003" in second.stderr
    resumed = records(tmp_path / "record.jsonl")[-1]
    assert Path(resumed["resume"]).name == "step-000000003"
    assert resumed["files"]["state.json"] == original  # bitwise equal state
    manifest = json.loads(resumed["files"]["MANIFEST.json"])
    assert manifest["step"] == 3


def test_pull_by_hand(tmp_path: Path, runtime_dir: Path) -> None:
    assert _run(tmp_path, runtime_dir).returncode == 0
    target = tmp_path / "elsewhere"
    pulled = subprocess.run(
        stalwart_argv(
            "checkpoints",
            "pull",
            "--dir",
            str(target),
            "--latest",
            "--remote-url",
            f"file://{tmp_path / 'remote'}",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (target / "step-000000003" / "MANIFEST.json").exists()
