"""Real supervised jobs notifying a local JSON endpoint through apprise's `json://`."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart import config
from stalwart.errors import UsageError
from stalwart.journal import Journal
from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH
from stalwart.supervisor import Supervisor
from tests.conftest import wait_for
from tests.notify.collector import BlackHole, Collector, fields
from tests.preemption.fake_metadata import FakeMetadata, Reply
from tests.supervised import environment, stalwart_argv

SAVER = Path(__file__).resolve().parent / "saver.py"
FAIL = ["sh", "-c", "echo 'step 3'; echo 'RuntimeError: loss is NaN' >&2; exit 1"]


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


def run(
    tmp_path: Path, runtime_dir: Path, url: str | None, command: list[str], *options: str
) -> subprocess.CompletedProcess[str]:
    notify = ["--set", f"notify.urls=['{url}']"] if url else []
    argv = stalwart_argv(
        "run", "--state-dir", str(tmp_path / "state"), "--name", "nj",
        "--set", "restart.backoff_initial_s=0", *notify, *options, "--", *command,
    )  # fmt: skip
    return subprocess.run(
        argv, cwd=tmp_path, env=environment(runtime_dir), capture_output=True, text=True,
        timeout=45, check=False,
    )  # fmt: skip


def test_a_job_that_gives_up_notifies_once_with_the_cause(
    tmp_path: Path, runtime_dir: Path, collector: Collector
) -> None:
    done = run(tmp_path, runtime_dir, collector.url(), FAIL, "--set", "restart.max_restarts=1")
    assert done.returncode == 3, done.stderr
    (post,) = collector.posts  # failures are not in the default events: one message
    found = fields(post)
    assert post["type"] == "failure" and "gave up" in post["title"]
    assert found["job"].startswith("nj (run ") and found["host"]
    assert found["what happened"].startswith("gave up")
    assert found["cause"].startswith("UNKNOWN (exit code 1)")
    assert "RuntimeError: loss is NaN" in post["message"]  # the last output lines
    assert "restart budget spent" in found["stopped"]
    assert found["look further"] == f"stalwart history nj --state-dir {tmp_path / 'state'}"


def test_a_job_that_completes_notifies_once_and_notify_test_sends_one(
    tmp_path: Path, runtime_dir: Path, collector: Collector
) -> None:
    done = run(tmp_path, runtime_dir, collector.url(), ["sh", "-c", "echo trained"])
    assert done.returncode == 0, done.stderr
    (post,) = collector.posts
    assert post["type"] == "success" and fields(post)["what happened"] == "training completed"
    collector.posts.clear()
    sent = subprocess.run(
        stalwart_argv("notify", "test", "nj", "--state-dir", str(tmp_path / "state")),
        cwd=tmp_path, env=environment(runtime_dir), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "delivered to 1 of 1" in sent.stdout
    (post,) = collector.posts
    assert "test notification" in post["title"] and fields(post)["job"] == "nj"


def test_a_preempted_job_notifies_once_with_the_checkpoint_it_resumes_from(
    tmp_path: Path, runtime_dir: Path, collector: Collector
) -> None:
    metadata = FakeMetadata.start()
    try:
        metadata.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
        metadata.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
        argv = stalwart_argv(
            "run", "--state-dir", str(tmp_path / "state"), "--name", "pj",
            "--ckpt-dir", str(tmp_path / "ck"),
            "--set", f"notify.urls=['{collector.url()}']",
            "--set", "preemption.provider=gcp",
            "--set", f"preemption.gcp_base_url={metadata.base_url}",
            "--set", "preemption.gcp_notice_s=2", "--set", "preemption.poll_interval_s=0.2",
            "--set", "preemption.timeout_s=0.2", "--set", "preemption.drain_margin_s=0.5",
            "--set", "checkpoint.interval.mode=fixed",
            "--set", "checkpoint.interval.fixed_interval_s=1",
            "--", sys.executable, str(SAVER), "--log", str(tmp_path / "log.jsonl"),
            "--ready", str(tmp_path / "ready"),
        )  # fmt: skip
        supervisor = subprocess.Popen(
            argv, cwd=tmp_path, env=environment(runtime_dir), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for((tmp_path / "ready").exists, 20, "the first checkpoint")
            metadata.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
            _, err = supervisor.communicate(timeout=30)
        finally:
            supervisor.kill()
            supervisor.communicate(timeout=5)
    finally:
        metadata.stop()
    assert supervisor.returncode == 75, err
    (post,) = collector.posts
    found = fields(post)
    assert post["type"] == "warning" and "preempted" in found["what happened"]
    assert "machine preempted (instance/preempted is TRUE)" in found["stopped"]
    newest = sorted(p.name for p in (tmp_path / "ck").glob("step-*"))[-1]
    assert found["next"] == f"the next start resumes from {newest}"


def test_a_crash_loop_of_20_failures_is_held_to_the_rate_limit(
    tmp_path: Path, runtime_dir: Path, collector: Collector
) -> None:
    done = run(
        tmp_path, runtime_dir, collector.url(), ["false"],
        "--set", "restart.max_restarts=19", "--set", "restart.backoff_multiplier=1",
        "--set", "notify.events=[failure, gave_up]", "--set", "notify.rate_limit_per_window=3",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert len(journal.attempts()) == 20
    titles = [p["title"] for p in collector.posts]
    assert sum("failure" in t for t in titles) == 3
    assert sum("gave up" in t for t in titles) == 1 and len(titles) == 4


def _relaunch_gaps_s(state: Path) -> list[float]:
    with Journal(state / "journal.sqlite") as journal:
        attempts = journal.attempts()
    return [
        later.started_unix - earlier.ended_unix
        for earlier, later in itertools.pairwise(attempts)
        if earlier.ended_unix is not None
    ]


def test_an_unreachable_endpoint_never_delays_a_relaunch(tmp_path: Path, runtime_dir: Path) -> None:
    """Each failure's notification goes to a port that accepts and never answers (3 s read
    timeout): had the loop waited for one, each relaunch would take 3 s more. The gaps
    between an attempt's end and the next start are compared with a run without notify."""
    hole = BlackHole()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    options = ["--set", "restart.max_restarts=5", "--set", "restart.backoff_multiplier=1"]
    try:
        started = time.monotonic()
        baseline = run(tmp_path / "a", runtime_dir, None, ["false"], *options)
        baseline_s = time.monotonic() - started
        started = time.monotonic()
        notified = run(
            tmp_path / "b", runtime_dir, hole.url(read_timeout_s=3), ["false"], *options,
            "--set", "notify.events=[failure, gave_up]", "--set", "notify.retries=0",
            "--set", "notify.rate_limit_per_window=100", "--set", "notify.flush_timeout_s=0.5",
        )  # fmt: skip
        notified_s = time.monotonic() - started
    finally:
        hole.close()
    assert baseline.returncode == notified.returncode == 3, notified.stderr
    plain = _relaunch_gaps_s(tmp_path / "a" / "state")
    with_notify = _relaunch_gaps_s(tmp_path / "b" / "state")
    assert len(plain) == len(with_notify) == 5
    print(
        f"relaunch gap median {statistics.median(plain) * 1e3:.1f} ms without notify, "
        f"{statistics.median(with_notify) * 1e3:.1f} ms with an endpoint that never answers "
        f"(max {max(with_notify) * 1e3:.1f} ms); whole runs {baseline_s:.2f} s, {notified_s:.2f} s"
    )
    assert max(with_notify) < 3.0 / 2  # not one relaunch waited for a read timeout
    assert "still undelivered" in notified.stderr  # they were stuck, and exit did not wait


def test_a_url_apprise_does_not_understand_is_a_usage_error_before_any_start(
    tmp_path: Path,
) -> None:
    """A UsageError is exit 2 from `stalwart run` (the CLI's contract); raised in setup."""
    job = config.validate(
        {
            "command": ["true"],
            "state_dir": str(tmp_path / "state"),
            "notify": {"urls": ["slak://T0KEN/abc"]},
        },
        "test",
    )
    with pytest.raises(UsageError, match=r"notify\.urls\[0\]: apprise does not understand") as e:
        Supervisor(job, environ={"XDG_RUNTIME_DIR": str(tmp_path)}).run()
    assert "T0KEN" not in str(e.value)
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert journal.attempts() == []  # nothing started
