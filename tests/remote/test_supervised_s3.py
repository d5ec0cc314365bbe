"""A fresh machine resumes from S3: the real supervisor, s3fs, moto's server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from stalwart.remote import RemoteConfig
from tests.remote.conftest import AWS_ENV
from tests.supervised import environment, records, stalwart_argv
from tests.test_remote_supervised import TRAINER


def _run(tmp_path: Path, runtime_dir: Path, config: RemoteConfig, release: Path) -> str:
    """Run until the trainer exits; it waits for `release/step-000000003/MANIFEST.json`,
    which this side creates once the supervisor says step 3 is durable in S3."""
    options = json.dumps(config.storage_options)
    env = {**environment(runtime_dir), **AWS_ENV}
    supervisor = subprocess.Popen(
        stalwart_argv(
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            "--ckpt-dir",
            str(tmp_path / "ck"),
            "--set",
            f"checkpoint.remote.url={config.url}",
            "--set",
            f"checkpoint.remote.storage_options={options}",
            "--",
            sys.executable,
            "-c",
            TRAINER,
            str(tmp_path / "record.jsonl"),
            str(release),
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        assert supervisor.stderr is not None
        for line in supervisor.stderr:
            lines.append(line)
            if "step-000000003 durable at" in line:
                marker = release / "step-000000003"
                marker.mkdir(parents=True, exist_ok=True)
                (marker / "MANIFEST.json").write_text("{}")
        assert supervisor.wait(timeout=60) == 0, "".join(lines)[-3000:]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        if supervisor.stderr is not None:
            supervisor.stderr.close()
    return "".join(lines)


def test_fresh_machine_resumes_from_s3(
    tmp_path: Path, runtime_dir: Path, s3_config: RemoteConfig
) -> None:
    first = _run(tmp_path, runtime_dir, s3_config, tmp_path / "first")
    assert "step-000000003 durable at" in first
    original = (tmp_path / "ck" / "step-000000003" / "state.json").read_bytes()
    shutil.rmtree(tmp_path / "ck")  # a fresh machine: no checkpoints, no state
    shutil.rmtree(tmp_path / "state")
    second = _run(tmp_path, runtime_dir, s3_config, tmp_path / "second")
    assert "restored step-000000003" in second
    resumed = records(tmp_path / "record.jsonl")[-1]
    assert Path(resumed["resume"]).name == "step-000000003"
    assert resumed["files"]["state.json"].encode() == original  # bitwise equal state
