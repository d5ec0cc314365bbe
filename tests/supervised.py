"""Helpers to run the real `stalwart` CLI over the scripted fake trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TRAINER = Path(__file__).parent / "trainers" / "scripted.py"


def stalwart_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "stalwart", *args]


def run_argv(state_dir: Path, options: list[str], trainer_args: list[str]) -> list[str]:
    return stalwart_argv(
        "run",
        "--state-dir",
        str(state_dir),
        "--set",
        "restart.backoff_initial_s=0.05",
        *options,
        "--",
        sys.executable,
        str(TRAINER),
        *trainer_args,
    )


def environment(runtime_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    env.pop("STATE_DIRECTORY", None)
    env.pop("RUNTIME_DIRECTORY", None)
    return env


def start(
    tmp_path: Path, runtime_dir: Path, options: list[str], trainer_args: list[str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        run_argv(tmp_path / "state", options, trainer_args),
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    tmp_path: Path,
    runtime_dir: Path,
    options: list[str],
    trainer_args: list[str],
    timeout_s: float = 30,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        run_argv(tmp_path / "state", options, trainer_args),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def proc_state(pid: int) -> str | None:
    """The state letter from /proc, None if gone (zombies answer kill 0; this does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")
