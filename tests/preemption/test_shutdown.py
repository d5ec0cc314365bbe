"""The SIGTERM rule (pure) and the shutdown evidence (files, systemd's answer)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from stalwart.policy.sigterm import ShutdownEvidence, sigterm_meaning
from stalwart.preemption.shutdown import probe_shutdown, systemctl_system_state
from stalwart.types import ExitKind


def expected_meaning(flag: bool, evidence: ShutdownEvidence, notice: bool) -> ExitKind:
    if notice:
        return ExitKind.PREEMPTED
    if flag and evidence is not ShutdownEvidence.RUNNING:
        return ExitKind.PREEMPTED
    return ExitKind.STOPPED


@pytest.mark.parametrize(
    ("flag", "evidence", "notice"),
    list(itertools.product([False, True], list(ShutdownEvidence), [False, True])),
)
def test_sigterm_meaning_table(flag: bool, evidence: ShutdownEvidence, notice: bool) -> None:
    meaning = sigterm_meaning(sigterm_is_preemption=flag, evidence=evidence, notice_pending=notice)
    assert meaning is expected_meaning(flag, evidence, notice)


def test_sigterm_is_a_plain_stop_by_default() -> None:
    for evidence in ShutdownEvidence:
        assert sigterm_meaning(sigterm_is_preemption=False, evidence=evidence) is ExitKind.STOPPED


def _never() -> str | None:
    raise AssertionError("systemd was asked though it is not PID 1 here")


def test_no_systemd_no_markers_is_unknown(tmp_path: Path) -> None:
    assert probe_shutdown(tmp_path, system_state=_never) is ShutdownEvidence.UNKNOWN


@pytest.mark.parametrize("marker", ["systemd/shutdown/scheduled", "nologin"])
def test_markers_mean_shutting_down(tmp_path: Path, marker: str) -> None:
    (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / marker).write_text("")
    assert probe_shutdown(tmp_path, system_state=_never) is ShutdownEvidence.SHUTTING_DOWN


@pytest.mark.parametrize(
    ("state", "marker", "evidence"),
    [
        ("stopping", False, ShutdownEvidence.SHUTTING_DOWN),
        ("running", False, ShutdownEvidence.RUNNING),
        ("degraded", False, ShutdownEvidence.RUNNING),
        # A scheduled shutdown that has not begun: this SIGTERM came from someone else.
        ("running", True, ShutdownEvidence.RUNNING),
        (None, False, ShutdownEvidence.UNKNOWN),
        (None, True, ShutdownEvidence.SHUTTING_DOWN),
        ("offline", False, ShutdownEvidence.UNKNOWN),
    ],
)
def test_systemd_answer_comes_first(
    tmp_path: Path, state: str | None, marker: bool, evidence: ShutdownEvidence
) -> None:
    (tmp_path / "systemd" / "system").mkdir(parents=True)
    if marker:
        (tmp_path / "nologin").write_text("")
    assert probe_shutdown(tmp_path, system_state=lambda: state) is evidence


def test_systemctl_state_reads_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "systemctl"
    fake.write_text('#!/bin/sh\n[ "$1" = is-system-running ] && echo stopping\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert systemctl_system_state() == "stopping"


def test_systemctl_state_without_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert systemctl_system_state() is None


def test_systemctl_that_hangs_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\nexec {os.path.realpath('/bin/sleep')} 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert systemctl_system_state(timeout_s=0.2) is None
