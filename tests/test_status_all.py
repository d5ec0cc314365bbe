"""`stalwart status` with no name: every job in the standard state locations, one line each.

The service's location is moved under tmp_path (STALWART_SYSTEM_STATE_ROOT), and the cwd's
`.stalwart/` is a temp directory: nothing under /var/lib is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from stalwart import paths
from stalwart.checkpoint import prepare_resume
from stalwart.journal import Journal, RunStatus
from stalwart.supervisor.keeper import JournalVerifyCache
from stalwart.types import Classification, ExitKind, ExitStatus
from tests.checkpoint.helpers import save
from tests.supervised import environment, stalwart_argv


def _job(state: Path, ckpt: Path | None, kinds: list[tuple[ExitKind, str, int]]) -> None:
    """A stopped job's state dir: a run with attempts ending as `kinds` (kind, reason, step)."""
    state.mkdir(parents=True)
    with Journal(state / paths.JOURNAL_NAME) as journal:
        run = journal.start_run(state.name, ["python", "train.py"], time.time() - 600)
        for attempt, (kind, reason, step) in enumerate(kinds):
            journal.start_attempt(run.run_id, attempt, 100 + attempt, time.time() - 500, "")
            journal.set_attempt_progress(run.run_id, attempt, last_step=step)
            journal.end_attempt(
                run.run_id,
                attempt,
                now_unix=time.time() - 400 + attempt,
                status=ExitStatus(
                    0 if kind is ExitKind.STOPPED else None, None if kind is ExitKind.STOPPED else 9
                ),
                verdict=Classification(kind, kind.is_failure, reason),
                uptime_s=10.0,
                decision="stop" if kind is ExitKind.STOPPED else "restart",
            )
        journal.end_run(run.run_id, RunStatus.STOPPED, time.time() - 300)
        if ckpt is not None:
            (state / paths.CKPT_DIR_POINTER).write_text(f"{ckpt}\n")
            # What the supervisor does at each start: verdicts cached in the journal.
            prepare_resume(ckpt, cache=JournalVerifyCache(journal, ckpt))


def _status(tmp_path: Path, runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = environment(runtime_dir)
    env[paths.SYSTEM_STATE_ROOT_ENV] = str(tmp_path / "var-lib-stalwart")
    return subprocess.run(
        stalwart_argv("status", *args),
        cwd=tmp_path / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _box(tmp_path: Path) -> None:
    ck = tmp_path / "ck-svc"
    for step in (10, 20):
        save(ck, step)
    _job(
        tmp_path / "var-lib-stalwart" / "svc",
        ck,
        [(ExitKind.OOM, "CUDA out of memory", 15), (ExitKind.STOPPED, "stop requested", 25)],
    )
    (tmp_path / "work").mkdir()
    _job(tmp_path / "work" / ".stalwart" / "exp1", None, [(ExitKind.COMPLETED, "exit code 0", 7)])
    (tmp_path / "work" / ".stalwart" / "not-a-job").mkdir()  # no journal: not listed


def test_every_job_in_the_standard_locations_as_json(tmp_path: Path, runtime_dir: Path) -> None:
    _box(tmp_path)
    result = _status(tmp_path, runtime_dir, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    jobs = {job["name"]: job for job in report["jobs"]}
    assert list(jobs) == ["svc", "exp1"]  # the service's first

    svc = jobs["svc"]
    assert svc["running"] is False and svc["state"] == "stopped (run stopped)"
    assert svc["attempt"] == 1 and svc["step"] == 25
    assert svc["newest_checkpoint"]["name"] == "step-000000020"
    assert svc["newest_checkpoint"]["state"] == "intact"  # verified at the start, cached
    assert 0 <= svc["newest_checkpoint"]["age_s"] < 600
    assert svc["last_failure"] == "OOM: CUDA out of memory"
    assert 300 < svc["last_failure_age_s"] < 600

    exp1 = jobs["exp1"]
    assert exp1["step"] == 7 and exp1["newest_checkpoint"] is None
    assert exp1["last_failure"] is None
    assert Path(exp1["state_dir"]) == tmp_path / "work" / ".stalwart" / "exp1"


def test_one_line_per_job(tmp_path: Path, runtime_dir: Path) -> None:
    _box(tmp_path)
    result = _status(tmp_path, runtime_dir)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:4] == ["job", "state", "attempt", "step"]
    assert [line.split()[0] for line in lines] == ["svc", "exp1"]
    assert "step-000000020, " in lines[0] and "min ago" in lines[0]
    assert "OOM: CUDA out of memory" in lines[0]


def test_a_name_or_a_state_dir_still_means_one_job(tmp_path: Path, runtime_dir: Path) -> None:
    _box(tmp_path)
    state = tmp_path / "var-lib-stalwart" / "svc"
    named = _status(tmp_path, runtime_dir, "svc", "--json")  # found in the service's location
    assert json.loads(named.stdout)["name"] == "svc", named.stderr
    by_dir = _status(tmp_path, runtime_dir, "--state-dir", str(state), "--json")
    assert json.loads(by_dir.stdout)["run_id"] == json.loads(named.stdout)["run_id"]


def test_no_jobs_says_where_it_looked(tmp_path: Path, runtime_dir: Path) -> None:
    (tmp_path / "work").mkdir()
    result = _status(tmp_path, runtime_dir)
    assert result.returncode == 0 and "no jobs found" in result.stdout
    assert str(tmp_path / "var-lib-stalwart") in result.stdout
    assert json.loads(_status(tmp_path, runtime_dir, "--json").stdout) == {"ok": True, "jobs": []}


def test_known_state_dirs_reads_only_the_given_locations(tmp_path: Path) -> None:
    (tmp_path / "svc" / "a").mkdir(parents=True)
    (tmp_path / "svc" / "a" / paths.JOURNAL_NAME).touch()
    environ = {paths.SYSTEM_STATE_ROOT_ENV: str(tmp_path / "svc")}
    assert paths.known_state_dirs(environ, cwd=tmp_path / "nowhere") == [
        ("a", tmp_path / "svc" / "a")
    ]
    assert os.path.isdir(tmp_path / "svc" / "a")
