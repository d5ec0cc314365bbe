"""When the outside world fails (issue 17): the supervisor logs it, says what to do, and
goes on, or refuses with exit 2 before anything starts; it never dies with a traceback.

Real processes where the fault can be made real: an immutable file or directory
(`chattr +i`, which stops root too) and a full file system (a small tmpfs); those tests
are skipped where this machine does not allow them, and each fault also has a
trainer-less test with an injected one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from stalwart.channels.notify_socket import MAX_INT, NotifySocket, parse
from stalwart.checkpoint import CheckpointStore, FsOps, QuarantineReason
from stalwart.client import Client
from stalwart.clock import FakeClock
from stalwart.config import CheckpointConfig
from stalwart.errors import JournalUnusable
from stalwart.journal import MIGRATIONS, Journal
from stalwart.policy.estimators import (
    FailureRateEstimator,
    RestartCostEstimator,
    SaveCostEstimator,
)
from stalwart.policy.interval import IntervalConfig
from stalwart.supervisor.keeper import CheckpointKeeper
from stalwart.supervisor.pacing import Pacer
from stalwart.types import Classification, ExitKind, ExitStatus
from tests.conftest import wait_for
from tests.supervised import TRAINER, environment, records, stalwart_argv

TRAINERS = Path(__file__).parent / "trainers"

# --- helpers ---------------------------------------------------------------------------


def _run_argv(tmp_path: Path, options: list[str], trainer: list[str]) -> list[str]:
    return stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        "restart.backoff_initial_s=0",
        *options,
        "--",
        sys.executable,
        *trainer,
    )


def _run(
    tmp_path: Path, runtime_dir: Path, options: list[str], trainer: list[str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _run_argv(tmp_path, options, trainer),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def _cli(runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stalwart_argv(*args),
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i path` for the block (root cannot write it either), or skip the test."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[None]:
    """A tmpfs of `size_bytes` mounted at `path` for the block, or skip the test."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=True)


def _fill(path: Path) -> None:
    """Write `path` until its file system has no room left."""
    with open(path, "wb", buffering=0) as handle:
        for chunk_bytes in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * chunk_bytes)


def _wait_for_file(proc: subprocess.Popen[str], path: Path, what: str) -> None:
    """Until `path` exists; fail at once (with its stderr) if the supervisor exits first."""

    def ready() -> bool:
        if path.exists():
            return True
        if proc.poll() is not None:
            _, stderr = proc.communicate()
            pytest.fail(f"stalwart exited {proc.returncode} before {what}:\n{stderr}")
        return False

    wait_for(ready, 30, what)


class NoRemove(FsOps):
    """A leftover that cannot be removed (an immutable file inside it)."""

    def remove_tree(self, path: Path) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))


class ReadOnlyDir(FsOps):
    """A checkpoint directory on a read-only mount."""

    def mkdir(self, path: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def replace(self, src: Path, dst: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(src))


def _commit(root: Path, step: int, *, poison: bool = False) -> None:
    """A checkpoint the storer trainer resumes from (or dies on, when `poison`)."""
    with CheckpointStore(root).begin(step) as tx:
        tx.write_bytes("state.json", json.dumps({"step": step, "poison": poison}).encode())


def _keeper(tmp_path: Path, journal: Journal, ops: FsOps) -> CheckpointKeeper:
    run = journal.start_run("job", ["x"], 1.0)
    return CheckpointKeeper(
        CheckpointConfig(), tmp_path / "ck", journal, run.run_id, FakeClock(), ops=ops
    )


# --- 3. a leftover .staging-* that cannot be removed -----------------------------------


def test_unremovable_leftover_is_logged_once_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ck"
    _commit(root, 1)
    leftover = root / ".staging-step-000000002-4242"
    leftover.mkdir()
    caplog.set_level(logging.INFO)
    with Journal(tmp_path / "j.sqlite") as journal:
        keeper = _keeper(tmp_path, journal, NoRemove())
        first = keeper.prepare_resume()
        second = keeper.prepare_resume()  # before a relaunch: tried again, not logged again
    for decision in (first, second):
        assert decision.resume_from is not None and decision.resume_from.name == "step-000000001"
        assert decision.stuck_leftovers == (leftover,) and decision.removed_leftovers == ()
    complaints = [r for r in caplog.records if "cannot remove" in r.getMessage()]
    assert len(complaints) == 1
    assert str(leftover) in complaints[0].getMessage()
    assert "remove it by hand" in complaints[0].getMessage().lower()
    assert leftover.is_dir()


def test_run_goes_on_past_an_immutable_staging_leftover(tmp_path: Path, runtime_dir: Path) -> None:
    leftover = tmp_path / "ck" / ".staging-step-000000005-4242"
    leftover.mkdir(parents=True)
    stuck = leftover / "weights.bin"
    stuck.write_bytes(b"half a save")
    record = tmp_path / "a.jsonl"
    with immutable(stuck):
        # attempt 0 fails: the leftover is met at start and again before the relaunch
        result = _run(
            tmp_path, runtime_dir, [], [str(TRAINER), "--record", str(record), "--fail-until", "1"]
        )
    assert result.returncode == 0, result.stderr
    assert [r["attempt"] for r in records(record)] == [0, 1]
    assert result.stderr.count("cannot remove") == 1, result.stderr
    assert str(leftover) in result.stderr and "Traceback" not in result.stderr
    assert stuck.exists()


# --- 4. a journal this stalwart cannot use ---------------------------------------------


def _unusable_journal(state: Path, kind: str) -> None:
    state.mkdir()
    path = state / "journal.sqlite"
    if kind == "not sqlite":
        path.write_bytes(b"this is not an SQLite database\n" * 200)
    elif kind == "newer":
        Journal(path).close()
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
        db.close()
    else:  # cannot be opened at all
        path.mkdir()


@pytest.mark.parametrize("kind", ["not sqlite", "newer", "not openable"])
def test_unusable_journal_exits_2_naming_it_before_anything_starts(
    tmp_path: Path, runtime_dir: Path, kind: str
) -> None:
    state = tmp_path / "state"
    _unusable_journal(state, kind)
    journal = state / "journal.sqlite"
    before = journal.read_bytes() if journal.is_file() else None
    canary = tmp_path / "started"
    run = _run(tmp_path, runtime_dir, [], [str(TRAINER), "--canary", str(canary)])
    assert run.returncode == 2, run.stderr
    assert not canary.exists()
    for result in (
        run,
        _cli(runtime_dir, "history", "--state-dir", str(state)),
        _cli(runtime_dir, "status", "--state-dir", str(state)),
        _cli(runtime_dir, "report", "--state-dir", str(state)),
    ):
        assert result.returncode == 2, result.stderr
        assert str(journal) in result.stderr and "Traceback" not in result.stderr
        assert "--state-dir" in result.stderr  # what to do
    if before is not None:
        assert journal.read_bytes() == before  # left as it was


def test_journal_failures_before_setup_is_done_are_unusable(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal._db.execute("PRAGMA query_only=1")  # the file turned read-only
        with pytest.raises(JournalUnusable, match="read-only"):
            journal.start_run("job", ["x"], 1.0)


# --- 5. notify values out of range -----------------------------------------------------


def test_parse_rejects_out_of_range_numbers() -> None:
    message = parse(
        f"STEP={MAX_INT + 1}\nCKPT_BYTES=99999999999999999999\nRANK=-1\nCKPT_STALL_S=inf\n"
        f"CKPT_PERSIST_S=1e999\nCKPT_STALL_S=-0.5\nCKPT_PERSIST_S=nan\nCKPT_DONE=/c/1".encode()
    )
    assert message.fields == {"CKPT_DONE": "/c/1"}
    assert message.malformed == 7
    assert parse(f"STEP={MAX_INT}\nCKPT_STALL_S=0".encode()).fields == {
        "STEP": MAX_INT,
        "CKPT_STALL_S": 0.0,
    }


def test_estimators_ignore_non_finite_samples() -> None:
    costs = SaveCostEstimator()
    costs.observe(stall_s=math.inf, persist_s=math.nan)
    assert costs.estimate() is None
    costs.observe(stall_s=2.0, persist_s=math.inf)
    estimate = costs.estimate()
    assert estimate is not None and (estimate.ckpt_s, estimate.persist_s) == (2.0, None)
    restarts = RestartCostEstimator()
    restarts.observe(math.inf)
    assert restarts.estimate() is None
    failures = FailureRateEstimator(prior_mtbf_s=100.0)
    failures.observe(math.nan, (ExitKind.INFRA,))
    assert math.isfinite(failures.estimate(math.inf).mtbf_s)


def test_pacer_ignores_durations_it_cannot_learn_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = IntervalConfig(min_interval_s=1.0, max_interval_s=3600.0)
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite") as journal:
        run = journal.start_run("job", ["x"], clock.wall())
        pacer = Pacer(config, journal, "job", run.run_id, clock)
        # a wall-clock step can make launch-to-first-step negative
        pacer.on_restart(-5.0)
        pacer.on_save(
            attempt=0,
            step=1,
            path=None,
            size_bytes=1,
            stall_s=math.inf,
            persist_s=-1.0,
            source="trainer",
            running_exposure_s=math.nan,
        )
        pacer.on_remote_persist(math.inf)
        pacer.on_attempt_end(math.inf, ExitKind.INFRA)
        (saved,) = journal.checkpoints("job")
        assert (saved.stall_s, saved.persist_s) == (None, None)
        assert journal.ok
        # a journal from before the checks: inf stored as a sample
        journal._db.execute("UPDATE checkpoints SET stall_s = 1e999")
        Pacer(config, journal, "job", run.run_id, clock)
    assert sum("ignoring" in r.getMessage() for r in caplog.records) == 1


def test_client_never_sends_a_non_finite_number(runtime_dir: Path) -> None:
    server = NotifySocket(runtime_dir / "n.sock")
    try:
        with Client({"STALWART_NOTIFY_SOCKET": str(server.path)}) as client:
            client.checkpoint_done(
                3, stall_s=math.inf, persist_s=math.nan, size_bytes=2**70, path="/c/3"
            )
            client.send(CKPT_STALL_S=math.inf, STATUS="ok")
        messages = server.receive()
    finally:
        server.close()
    assert [m.fields for m in messages] == [{"CKPT_DONE": "/c/3"}, {"STATUS": "ok"}]
    assert server.malformed_total == 0


RAW_SENDER = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(sys.argv[1].encode(), os.environ["STALWART_NOTIFY_SOCKET"])
sock.sendto(b"DONE=1", os.environ["STALWART_NOTIFY_SOCKET"])
"""


@pytest.mark.parametrize(
    "datagram",
    [
        "CKPT_BYTES=99999999999999999999\nCKPT_DONE=step-1",
        "STEP=99999999999999999999",
        "CKPT_STALL_S=inf\nCKPT_DONE=step-1",
        "CKPT_PERSIST_S=1e999\nCKPT_DONE=step-1",
    ],
)
def test_out_of_range_notify_values_do_not_stop_the_supervisor(
    tmp_path: Path, runtime_dir: Path, datagram: str
) -> None:
    result = _run(tmp_path, runtime_dir, [], ["-c", RAW_SENDER, datagram])
    assert result.returncode == 0, result.stderr
    assert "malformed notify line" in result.stderr and "Traceback" not in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (attempt,) = journal.attempts()
        assert attempt.kind == "COMPLETED"
        assert all(
            c.size_bytes is None and c.stall_s is None for c in journal.checkpoints("default")
        )


# --- 6. the journal cannot be written during supervision -------------------------------


def test_journal_write_failures_during_supervision_are_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        run = journal.start_run("job", ["x"], 1.0)
        journal.start_attempt(run.run_id, 0, 10, 2.0, "")
        journal.survive_failures()
        journal._db.execute("PRAGMA query_only=1")  # read-only from now on
        journal.end_attempt(
            run.run_id,
            0,
            now_unix=3.0,
            status=ExitStatus(1, None),
            verdict=Classification(ExitKind.UNKNOWN, True, "exit 1"),
            uptime_s=1.0,
            decision="restart",
        )
        assert journal.next_attempt(run.run_id) == 1
        journal.start_attempt(run.run_id, 1, 11, 4.0, "")
        assert journal.next_attempt(run.run_id) == 2  # a lost write never reuses a number
        assert not journal.ok and "readonly" in (journal.error or "")
        assert journal.failed_writes == 2
        assert [a.attempt for a in journal.attempts(run.run_id)] == [0]  # reads still work
        journal._db.execute("PRAGMA query_only=0")
        journal.end_run(run.run_id, "completed", 5.0)
        assert journal.ok and journal.runs()[0].status == "completed"
        journal._db.close()  # reads that fail give what they can: nothing
        assert journal.attempts() == [] and journal.kind_counts(run.run_id) == {}
        assert journal.cached_verdict("r", "n", 1, 1) is None
    failed = [r for r in caplog.records if "a write failed" in r.getMessage()]
    assert len(failed) == 1 and "read-only" in failed[0].getMessage()
    assert any("writable again" in r.getMessage() for r in caplog.records)


GATED = """
import os, sys, time
from pathlib import Path
attempt = os.environ["STALWART_ATTEMPT"]
gates = Path(sys.argv[1])
(gates / f"ready{attempt}").touch()
deadline = time.monotonic() + 30
while not (gates / f"go{attempt}").exists():
    if time.monotonic() > deadline:
        sys.exit(9)
    time.sleep(0.01)
sys.exit(1 if attempt == "0" else 0)
"""


def _through_a_journal_outage(
    tmp_path: Path, runtime_dir: Path, outage: Callable[[], AbstractContextManager[object]]
) -> tuple[dict[str, Any], str]:
    """Attempt 0 fails during `outage` (its end cannot be journaled); attempt 1 starts during
    it and, after it, completes. The status snapshot taken during it, and stderr."""
    gates = tmp_path / "gates"
    gates.mkdir()
    proc = subprocess.Popen(
        _run_argv(tmp_path, [], ["-c", GATED, str(gates)]),
        cwd=tmp_path,
        env=environment(runtime_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_file(proc, gates / "ready0", "attempt 0 started")
        with outage():
            (gates / "go0").touch()
            _wait_for_file(proc, gates / "ready1", "the relaunch after the journal failed")
            status = _cli(runtime_dir, "status", "--json", "--state-dir", str(tmp_path / "state"))
            assert status.returncode == 0, status.stderr
        (gates / "go1").touch()
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stderr.count("a write failed") == 1, stderr  # once, however many writes fail
    assert "writable again" in stderr and "Traceback" not in stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert journal.runs()[0].status == "completed"  # recorded once writable again
    return json.loads(status.stdout), stderr


def test_supervision_goes_on_when_the_state_disk_is_full(tmp_path: Path, runtime_dir: Path) -> None:
    state = tmp_path / "state"

    @contextlib.contextmanager
    def disk_full() -> Iterator[None]:
        _fill(state / "filler")
        yield
        (state / "filler").unlink()

    with small_tmpfs(state, 4 << 20):
        snapshot, stderr = _through_a_journal_outage(tmp_path, runtime_dir, disk_full)
    assert snapshot["journal_ok"] is False and snapshot["journal_failed_writes"] >= 1
    assert "full" in snapshot["journal_error"]
    assert "free space" in stderr


def test_supervision_goes_on_when_the_journal_turns_read_only(
    tmp_path: Path, runtime_dir: Path
) -> None:
    # Writes go to the WAL first: an immutable WAL fails every write (EPERM), even root's.
    wal = tmp_path / "state" / "journal.sqlite-wal"
    snapshot, _ = _through_a_journal_outage(tmp_path, runtime_dir, lambda: immutable(wal))
    assert snapshot["journal_ok"] is False and snapshot["journal_failed_writes"] >= 1
    assert "I/O error" in snapshot["journal_error"]


# --- 7. the resumed checkpoint cannot be quarantined -----------------------------------


def test_poison_that_cannot_be_moved_is_never_resumed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ck"
    _commit(root, 1)
    _commit(root, 2, poison=True)
    with Journal(tmp_path / "j.sqlite") as journal:
        keeper = _keeper(tmp_path, journal, ReadOnlyDir())
        assert keeper.prepare_resume().env_value == str(root / "step-000000002")
        assert keeper.quarantine("step-000000002", QuarantineReason.POISON, "crashes") is None
        decision = keeper.prepare_resume()
        (record,) = journal.quarantines()
    assert decision.env_value == str(root / "step-000000001")
    assert decision.skipped[0].name == "step-000000002"
    assert (record.name, record.reason, record.destination) == ("step-000000002", "poison", "")
    assert "Read-only file system" in record.detail
    assert (root / "step-000000002").is_dir()
    assert any("cannot move checkpoint step-000000002" in r.getMessage() for r in caplog.records)


def test_rollback_goes_on_when_the_checkpoint_dir_is_read_only(
    tmp_path: Path, runtime_dir: Path
) -> None:
    root = tmp_path / "ck"
    _commit(root, 1)
    _commit(root, 2, poison=True)
    record = tmp_path / "a.jsonl"
    with immutable(root):
        result = _run(
            tmp_path,
            runtime_dir,
            ["--set", "restart.poison_after_failures=1"],
            [str(TRAINERS / "storer.py"), "--record", str(record), "--saves", "0"],
        )
    assert result.returncode == 0, result.stderr
    resumes = [Path(r["resume_from"]).name for r in records(record)]
    assert resumes == ["step-000000002", "step-000000001"]
    assert "cannot move checkpoint step-000000002" in result.stderr
    assert "Traceback" not in result.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (moved,) = journal.quarantines()
        assert (moved.name, moved.reason, moved.destination) == ("step-000000002", "poison", "")
        assert "rolled back from poison checkpoint step-000000002" in (
            journal.attempts()[0].decision or ""
        )
    assert (root / "step-000000002").is_dir()
