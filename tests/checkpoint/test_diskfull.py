"""A save into a full file system fails cleanly and the previous checkpoint stays intact."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("diskfull.py")


def _report(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout.decode().splitlines()[-1])
    return report


def _check(report: dict[str, Any], errno_name: str) -> None:
    assert report["error"]["type"] == "DiskFull", report
    assert "step-000000002" in report["error"]["message"]
    assert errno_name in report["error"]["message"] or "space" in report["error"]["message"]
    assert report["staging_after_failure"] == []  # the failed save cleaned up after itself
    assert report["resume_from"] == "step-000000001"
    assert report["resume_state"] == "intact"
    assert report["entries"] == ["step-000000001"]


@pytest.mark.slow
def test_save_over_rlimit_fsize_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "ck"), "rlimit"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    _check(_report(result), "File too large")


def _can_mount_tmpfs(mountpoint: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_save_into_full_tmpfs_fails_cleanly(tmp_path: Path) -> None:
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    if not _can_mount_tmpfs(mountpoint):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs root)")
    command = (
        f'mount -t tmpfs -o size=1m tmpfs "{mountpoint}" && '
        f'exec "{sys.executable}" "{SCRIPT}" "{mountpoint}/ck" tmpfs'
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        check=False,
        timeout=30,
    )
    _check(_report(result), "No space left")
    assert list(mountpoint.iterdir()) == []  # the tmpfs lived only in the child's namespace
