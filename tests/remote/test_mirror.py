"""The mirror's thread: results through the callback, retries while the remote is away,
newest-preferred, urgent first, remote retention, and closing. Synchronisation is by
events (results, held requests, counted failures), each with a deadline."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart.remote import (
    Remote,
    RemoteConfig,
    RemoteMirror,
    RemoteState,
    RestoreOutcome,
    UploadOutcome,
    UploadResult,
    list_remote,
    restore_newest,
)
from tests.conftest import wait_for
from tests.remote.conftest import fast_config, new_bucket
from tests.remote.helpers import save, tree
from tests.remote.s3server import S3Server

DEADLINE_S = 15.0


class Results:
    """The mirror's callback: records results and wakes waiters."""

    def __init__(self) -> None:
        self.items: list[UploadResult] = []
        self._cond = threading.Condition()
        self.threads: set[str] = set()

    def __call__(self, result: UploadResult) -> None:
        with self._cond:
            self.items.append(result)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, count: int) -> list[UploadResult]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout=DEADLINE_S):
                pytest.fail(f"only {len(self.items)} of {count} results: {self.items}")
            return list(self.items)

    def by_name(self) -> dict[str, UploadResult]:
        with self._cond:
            return {r.name: r for r in self.items}


@pytest.fixture
def results() -> Results:
    return Results()


def started(config: RemoteConfig, results: Results) -> RemoteMirror:
    mirror = RemoteMirror(Remote.from_config(config), config, on_result=results)
    mirror.start()
    return mirror


@pytest.fixture
def mirror(s3_config: RemoteConfig, results: Results) -> Iterator[RemoteMirror]:
    m = started(s3_config, results)
    try:
        yield m
    finally:
        assert m.close(timeout_s=DEADLINE_S)


def test_upload_result_reaches_the_callback(
    mirror: RemoteMirror, results: Results, tmp_path: Path
) -> None:
    committed = save(tmp_path, 10)
    assert mirror.enqueue(committed.path)
    (result,) = results.wait(1)
    assert result.ok and result.outcome is UploadOutcome.UPLOADED
    assert result.name == "step-000000010" and result.step == 10
    assert result.size_bytes == result.sent_bytes > 0
    assert result.persist_s is not None and result.persist_s > 0
    assert result.attempts == 1 and result.error is None
    assert results.threads == {"stalwart-remote"}, "called from the mirror's thread"
    assert mirror.wait(DEADLINE_S)
    assert mirror.newest_durable == "step-000000010"
    assert mirror.wait_for("step-000000010", 0) == result
    assert mirror.status().in_flight is None


def test_foreign_names_are_refused(mirror: RemoteMirror, tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert not mirror.enqueue(tmp_path / "last.ckpt")


def test_unreachable_during_training_retries_until_it_is_back(
    own_s3_server: S3Server, results: Results, tmp_path: Path
) -> None:
    config = new_bucket(own_s3_server)
    committed = save(tmp_path / "ckpt", 20)
    before = tree(committed.path)
    mirror = started(config, results)
    try:
        own_s3_server.stop()  # connections refused
        assert mirror.enqueue(committed.path)  # returns at once
        wait_for(lambda: mirror.status().failures >= 2, DEADLINE_S, "two failed attempts")
        assert "Could not connect" in (mirror.status().last_error or "")
        assert not results.items
        own_s3_server.start()  # same port, same data
        (result,) = results.wait(1)
    finally:
        assert mirror.close(timeout_s=DEADLINE_S)
    assert result.ok and result.attempts >= 3
    assert "Could not connect" in (result.error or ""), "the last failure is kept"
    shutil.rmtree(tmp_path / "ckpt")
    restored = restore_newest(config, tmp_path / "ckpt")
    assert restored.outcome is RestoreOutcome.RESTORED
    assert tree(tmp_path / "ckpt" / "step-000000020") == before


def test_server_errors_are_retried(
    s3_server: S3Server, mirror: RemoteMirror, results: Results, tmp_path: Path
) -> None:
    s3_server.faults.add("fail", "step-000000021/", method="PUT", times=3)
    mirror.enqueue(save(tmp_path, 21).path)
    (result,) = results.wait(1)
    assert result.ok and result.attempts >= 2
    assert "injected" in (result.error or "")


def test_newest_preferred_older_pending_is_skipped(
    s3_server: S3Server, mirror: RemoteMirror, results: Results, tmp_path: Path
) -> None:
    hold = s3_server.faults.add("hold", "step-000000001/model.bin", method="PUT", times=1)
    paths = [save(tmp_path, step).path for step in (1, 2, 3, 4)]
    mirror.enqueue(paths[0])
    assert hold.arrived.wait(DEADLINE_S), "the first upload is in flight"
    for path in paths[1:]:
        mirror.enqueue(path)
    assert mirror.status().pending == ("step-000000004",)
    assert mirror.busy_names() == {"step-000000001", "step-000000004"}
    hold.release.set()
    results.wait(4)
    assert mirror.wait(DEADLINE_S)
    outcome = {name: r.outcome for name, r in results.by_name().items()}
    assert outcome == {
        "step-000000001": UploadOutcome.UPLOADED,  # in flight: finished, not dropped
        "step-000000002": UploadOutcome.SUPERSEDED,
        "step-000000003": UploadOutcome.SUPERSEDED,
        "step-000000004": UploadOutcome.UPLOADED,
    }
    assert [r.name for r in results.items if r.ok] == ["step-000000001", "step-000000004"]


def test_urgent_upload_goes_first_and_stops_the_one_in_flight(
    s3_server: S3Server, mirror: RemoteMirror, results: Results, tmp_path: Path
) -> None:
    hold = s3_server.faults.add("hold", "step-000000001/model.bin", method="PUT", times=1)
    regular, newer, emergency = (save(tmp_path, step).path for step in (1, 3, 2))
    mirror.enqueue(regular)
    assert hold.arrived.wait(DEADLINE_S)
    mirror.enqueue(newer)  # a regular save after the notice, say
    mirror.enqueue(emergency, urgent=True)
    hold.release.set()
    results.wait(3)
    assert [(r.name, r.outcome, r.urgent) for r in results.items] == [
        ("step-000000001", UploadOutcome.SUPERSEDED, False),
        ("step-000000002", UploadOutcome.UPLOADED, True),
        ("step-000000003", UploadOutcome.UPLOADED, False),
    ]
    states = {c.name: c.state for c in list_remote(mirror.remote)}
    assert states.get("step-000000001") is not RemoteState.COMPLETE


def test_urgent_pending_skips_an_older_regular_one(
    s3_server: S3Server, mirror: RemoteMirror, results: Results, tmp_path: Path
) -> None:
    hold = s3_server.faults.add("hold", "step-000000005/model.bin", method="PUT", times=1)
    mirror.enqueue(save(tmp_path, 5).path, urgent=True)
    assert hold.arrived.wait(DEADLINE_S)
    mirror.enqueue(save(tmp_path, 6).path)
    mirror.enqueue(save(tmp_path, 7).path, urgent=True)
    hold.release.set()
    results.wait(3)
    assert mirror.wait(DEADLINE_S)
    outcome = {name: r.outcome for name, r in results.by_name().items()}
    assert outcome["step-000000006"] is UploadOutcome.SUPERSEDED
    assert outcome["step-000000007"] is UploadOutcome.UPLOADED


def test_wait_times_out_while_held_and_close_cancels(
    s3_server: S3Server, s3_config: RemoteConfig, results: Results, tmp_path: Path
) -> None:
    hold = s3_server.faults.add("hold", "step-000000008/model.bin", method="PUT", times=1)
    mirror = started(s3_config, results)
    mirror.enqueue(save(tmp_path, 8).path)
    assert hold.arrived.wait(DEADLINE_S)
    mirror.enqueue(save(tmp_path, 9).path)
    assert not mirror.wait(0.05), "the drain deadline passes"
    assert mirror.wait_for("step-000000008", 0.01) is None
    hold.release.set()  # the held PUT completes; its progress report sees the close
    assert mirror.close(timeout_s=DEADLINE_S)
    outcome = {name: r.outcome for name, r in results.by_name().items()}
    assert outcome == {
        "step-000000008": UploadOutcome.CANCELLED,
        "step-000000009": UploadOutcome.CANCELLED,
    }
    assert not mirror.enqueue(save(tmp_path, 11).path), "closed"


def test_remote_retention_keeps_the_newest(
    s3_config: RemoteConfig, results: Results, tmp_path: Path
) -> None:
    config = s3_config.model_copy(update={"keep_last": 2})
    remote = Remote.from_config(config)
    remote.write_bytes("step-000000000/model.bin", b"an interrupted upload")
    with RemoteMirror(remote, config, on_result=results) as mirror:
        for step in (1, 2, 3, 4):
            mirror.enqueue(save(tmp_path, step).path)
            assert mirror.wait(DEADLINE_S)
            listed = list_remote(remote)
            assert listed[0].name == f"step-{step:09d}"
            assert listed[0].state is RemoteState.COMPLETE
            assert sum(c.complete for c in listed) == min(step, 2)
    pruned = [name for r in results.items for name in r.pruned]
    assert pruned == ["step-000000000", "step-000000001", "step-000000002"]
    assert [c.name for c in list_remote(remote)] == ["step-000000004", "step-000000003"]


def test_failed_local_checkpoint_is_not_retried(
    mirror: RemoteMirror, results: Results, tmp_path: Path
) -> None:
    committed = save(tmp_path, 12)
    shutil.rmtree(committed.path)  # pruned locally before its upload
    mirror.enqueue(committed.path)
    (result,) = results.wait(1)
    assert result.outcome is UploadOutcome.FAILED
    assert "gone or not committed" in (result.error or "")


def test_file_remote_round_trip(
    file_config: RemoteConfig, results: Results, tmp_path: Path
) -> None:
    local = tmp_path / "ckpt"
    committed = save(local, 30)
    before = tree(committed.path)
    with RemoteMirror(Remote.from_config(file_config), file_config, on_result=results) as m:
        m.enqueue(committed.path)
        assert results.wait(1)[0].ok
    shutil.rmtree(local)
    assert restore_newest(file_config, local).outcome is RestoreOutcome.RESTORED
    assert tree(local / "step-000000030") == before


def test_mirror_config_from_fast_config() -> None:
    assert fast_config("file:///x").retry_delay_s(1) == pytest.approx(0.02)
