"""Running framework scripts under the real `stalwart run`, and reading what they recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.supervised import environment, stalwart_argv

HERE = Path(__file__).parent
EXAMPLES = HERE.parent.parent / "examples"
TIMEOUT_S = 55


def framework_env(tmp_path: Path, runtime_dir: Path) -> dict[str, str]:
    """The supervisor's environment: nothing downloaded, one thread, temp files kept apart.

    Frameworks write temporaries (Lightning's atomic save, torch's compile cache) under
    $TMPDIR; a trainer killed on purpose leaves them behind, so they go under tmp_path and
    not into the test's private temp directory, which must stay empty.
    """
    env = environment(runtime_dir)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env.update(
        TMPDIR=str(scratch),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(scratch / "hf"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),
        PYTHONWARNINGS="ignore",
    )
    return env


def run_argv(tmp_path: Path, options: list[str], script: list[str]) -> list[str]:
    return stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        "restart.backoff_initial_s=0",
        "--set",
        "checkpoint.quiescence_s=0.3",
        *options,
        "--",
        sys.executable,
        *script,
    )


def run(
    tmp_path: Path, runtime_dir: Path, options: list[str], script: list[str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        run_argv(tmp_path, options, script),
        cwd=tmp_path,
        env=framework_env(tmp_path, runtime_dir),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def start(
    tmp_path: Path, runtime_dir: Path, options: list[str], script: list[str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        run_argv(tmp_path, options, script),
        cwd=tmp_path,
        env=framework_env(tmp_path, runtime_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stalwart_argv(*args), capture_output=True, text=True, timeout=30, check=False
    )


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def starts(path: Path) -> list[int]:
    """The global step each attempt started training at."""
    return [r["step"] for r in records(path) if r["event"] == "start"]
