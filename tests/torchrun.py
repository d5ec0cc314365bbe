"""Run two ranks under torchrun on this machine, without a supervisor; on a timeout, get
every process's Python stacks (faulthandler on SIGABRT) into the failure message."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest


def run_two_ranks(scratch: Path, script: Path, *args: str, timeout_s: float = 180) -> None:
    scratch.mkdir(parents=True, exist_ok=True)  # torchrun's temp files stay out of TMPDIR
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    argv += ["--nproc-per-node=2", str(script), *args]
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as launcher:
        try:
            output, _ = launcher.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            tree = psutil.Process(launcher.pid).children(recursive=True)
            for process in [*tree, psutil.Process(launcher.pid)]:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signal.SIGABRT)
            try:
                output, _ = launcher.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                launcher.kill()
                output, _ = launcher.communicate()
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            pytest.fail(f"torchrun did not finish in {timeout_s} s; stacks:\n{output[-20000:]}")
    assert launcher.returncode == 0, output[-4000:]
