"""Upload and restore against moto's S3 on 127.0.0.1 (through s3fs) and a file:// remote:
bitwise round trips, uploads interrupted at each file, corrupted objects, unreachable
remotes, and what the CLI helpers list and pull."""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path

import pytest
import s3fs  # type: ignore[import-untyped]

from stalwart.checkpoint import find_newest_intact, verify_checkpoint
from stalwart.checkpoint.layout import MANIFEST_NAME, checkpoint_name, scan
from stalwart.remote import (
    LocalCheckpointError,
    Remote,
    RemoteConfig,
    RemoteState,
    RestoreOutcome,
    list_remote,
    pull,
    restore_newest,
    upload_checkpoint,
)
from tests.checkpoint.helpers import flip_byte
from tests.remote.conftest import NetworkGuard, fast_config, new_bucket, storage_options
from tests.remote.helpers import FILES, save, tree
from tests.remote.s3server import S3Server


def states(remote: Remote) -> dict[str, RemoteState]:
    return {c.name: c.state for c in list_remote(remote)}


def test_upload_wipe_restore_is_bitwise_equal(any_config: RemoteConfig, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    committed = save(local, 1200, size_bytes=300_000)
    before = tree(committed.path)
    remote = Remote.from_config(any_config)
    uploaded = upload_checkpoint(remote, committed.path)
    assert uploaded.sent_bytes == uploaded.size_bytes > 300_000
    assert states(remote) == {"step-000001200": RemoteState.COMPLETE}

    shutil.rmtree(local)  # a fresh machine
    result = restore_newest(any_config, local)

    assert result.outcome is RestoreOutcome.RESTORED, result.message
    assert result.path == local / "step-000001200"
    assert tree(local / "step-000001200") == before, "files and manifest, byte for byte"
    assert verify_checkpoint(local / "step-000001200").intact
    assert scan(local).staging == ()
    assert find_newest_intact(local).newest is not None


def test_second_upload_of_the_same_checkpoint_sends_nothing(
    s3_remote: Remote, tmp_path: Path
) -> None:
    committed = save(tmp_path, 1)
    upload_checkpoint(s3_remote, committed.path)
    again = upload_checkpoint(s3_remote, committed.path)
    assert again.sent_bytes == 0 and not again.replaced


@pytest.mark.parametrize("broken", [*FILES, MANIFEST_NAME])
def test_upload_interrupted_at_each_file_is_never_chosen(
    broken: str, s3_server: S3Server, s3_config: RemoteConfig, s3_remote: Remote, tmp_path: Path
) -> None:
    local = tmp_path / "ckpt"
    first = save(local, 1)
    expected = tree(first.path)
    upload_checkpoint(s3_remote, first.path)
    second = save(local, 2)
    s3_server.faults.add("fail", f"step-000000002/{broken}", method="PUT")

    with pytest.raises(OSError, match="injected"):
        upload_checkpoint(s3_remote, second.path)

    assert states(s3_remote)["step-000000002"] is RemoteState.INCOMPLETE
    shutil.rmtree(local)
    result = restore_newest(s3_config, local)
    assert result.outcome is RestoreOutcome.RESTORED
    assert result.path == local / "step-000000001"
    assert [s.name for s in result.skipped] == ["step-000000002"]
    assert "no manifest" in result.skipped[0].reason
    assert tree(local / "step-000000001") == expected


def test_lost_write_is_caught_by_the_size_check(
    s3_server: S3Server, s3_remote: Remote, tmp_path: Path
) -> None:
    """A PUT acknowledged but not stored: the manifest must not be written over the hole."""
    committed = save(tmp_path, 3)
    s3_server.faults.add("lose", "step-000000003/rng.bin", method="PUT", times=1)
    with pytest.raises(OSError, match=r"rng\.bin: missing"):
        upload_checkpoint(s3_remote, committed.path)
    assert states(s3_remote)["step-000000003"] is RemoteState.INCOMPLETE
    upload_checkpoint(s3_remote, committed.path)  # the retry
    assert states(s3_remote)["step-000000003"] is RemoteState.COMPLETE


def test_corrupted_remote_object_falls_back_to_an_older_one(
    s3_config: RemoteConfig, s3_remote: Remote, tmp_path: Path
) -> None:
    local = tmp_path / "ckpt"
    for step in (1, 2):
        upload_checkpoint(s3_remote, save(local, step).path)
    expected = tree(local / "step-000000001")
    fs = s3_remote.fs
    target = s3_remote.path("step-000000002", "optim/state.bin")
    data = bytearray(fs.cat_file(target))
    data[len(data) // 2] ^= 0x01  # one bit of one byte, same size
    fs.pipe_file(target, bytes(data))
    assert states(s3_remote)["step-000000002"] is RemoteState.COMPLETE, "sizes still match"

    shutil.rmtree(local)
    result = restore_newest(s3_config, local)

    assert result.outcome is RestoreOutcome.RESTORED
    assert result.path == local / "step-000000001"
    assert tree(local / "step-000000001") == expected
    assert "digest mismatch" in result.skipped[0].reason
    assert result.newest_remote == "step-000000002"
    assert not (local / "step-000000002").exists()
    assert scan(local).staging == (), "the failed download's staging is removed"


def test_invalid_remote_manifest_is_skipped(any_config: RemoteConfig, tmp_path: Path) -> None:
    remote = Remote.from_config(any_config)
    local = tmp_path / "ckpt"
    for step in (1, 2):
        upload_checkpoint(remote, save(local, step).path)
    remote.write_bytes(f"step-000000002/{MANIFEST_NAME}", b'{"format": 1}')
    shutil.rmtree(local)
    result = restore_newest(any_config, local)
    assert result.path == local / "step-000000001"
    assert "missing keys" in result.skipped[0].reason


def test_remote_unreachable_at_start_warns_and_returns(
    own_s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3_config = new_bucket(own_s3_server)
    local = tmp_path / "ckpt"
    save(local, 5)
    own_s3_server.stop()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stalwart.remote"):
        result = restore_newest(s3_config, local, newer_than_step=5)
    assert result.outcome is RestoreOutcome.UNREACHABLE
    assert "Could not connect" in (result.error or "")
    assert time.monotonic() - started < 10
    assert any("going on with local checkpoints" in r.getMessage() for r in caplog.records)
    assert [p.name for p in local.iterdir()] == ["step-000000005"], "local left alone"


def test_unusable_url_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = restore_newest(fast_config("nosuchproto://bucket/x"), tmp_path)
    assert result.outcome is RestoreOutcome.FAILED
    assert "nosuchproto" in (result.error or "")


def test_local_as_new_as_remote_restores_nothing(any_config: RemoteConfig, tmp_path: Path) -> None:
    remote = Remote.from_config(any_config)
    local = tmp_path / "ckpt"
    upload_checkpoint(remote, save(local, 4).path)
    result = restore_newest(any_config, local, newer_than_step=4)
    assert result.outcome is RestoreOutcome.UP_TO_DATE
    assert result.newest_remote == "step-000000004"
    assert any_config.url is not None
    elsewhere = fast_config(any_config.url + "-empty", any_config.storage_options)
    empty = restore_newest(elsewhere, tmp_path / "other")
    assert empty.outcome is RestoreOutcome.NOTHING


def test_pull_by_name_and_latest(
    s3_config: RemoteConfig, s3_remote: Remote, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    for step in (1, 2, 3):
        upload_checkpoint(s3_remote, save(source, step).path)
    local = tmp_path / "ckpt"
    by_name = pull(s3_config, local, "step-000000002")
    assert by_name.outcome is RestoreOutcome.RESTORED
    assert tree(local / "step-000000002") == tree(source / "step-000000002")
    assert pull(s3_config, local, "2").outcome is RestoreOutcome.UP_TO_DATE
    assert pull(s3_config, local, "7").outcome is RestoreOutcome.NOTHING
    assert pull(s3_config, local, "latest!").outcome is RestoreOutcome.FAILED
    latest = pull(s3_config, local)
    assert latest.path == local / "step-000000003"


def test_listing_shows_each_state(s3_remote: Remote, tmp_path: Path) -> None:
    upload_checkpoint(s3_remote, save(tmp_path, 1).path)
    upload_checkpoint(s3_remote, save(tmp_path, 2).path)
    s3_remote.remove(["step-000000002/rng.bin"])
    s3_remote.write_bytes("step-000000003/model.bin", b"partial upload")
    listed = list_remote(s3_remote)
    assert [(c.name, c.state) for c in listed] == [
        ("step-000000003", RemoteState.INCOMPLETE),
        ("step-000000002", RemoteState.INVALID),
        ("step-000000001", RemoteState.COMPLETE),
    ]
    assert listed[1].reason == "rng.bin: missing"
    assert listed[2].url.endswith("/run-a/step-000000001")


def test_a_different_remote_copy_is_replaced(s3_remote: Remote, tmp_path: Path) -> None:
    """A remote step left by an earlier timeline is un-committed first, then replaced."""
    old = save(tmp_path / "old", 2, run_id="old-run", size_bytes=30_000)
    upload_checkpoint(s3_remote, old.path)
    new = save(tmp_path / "new", 2, run_id="new-run")
    uploaded = upload_checkpoint(s3_remote, new.path)
    assert uploaded.replaced
    pulled = pull(s3_remote, tmp_path / "pulled", "2")
    assert pulled.outcome is RestoreOutcome.RESTORED, pulled.message
    assert tree(tmp_path / "pulled" / "step-000000002") == tree(new.path)


def test_locally_corrupt_checkpoint_is_not_committed_remotely(
    s3_remote: Remote, tmp_path: Path
) -> None:
    committed = save(tmp_path, 6)
    flip_byte(committed.path / "model.bin")
    with pytest.raises(LocalCheckpointError, match=r"fails verification \(model\.bin: xxh3_128 is"):
        upload_checkpoint(s3_remote, committed.path)
    assert states(s3_remote).get("step-000000006") is not RemoteState.COMPLETE


def test_no_request_leaves_127_0_0_1(s3_server: S3Server, s3_config: RemoteConfig) -> None:
    options = s3_config.storage_options
    assert options["client_kwargs"]["endpoint_url"].startswith("http://127.0.0.1:")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options(s3_server.endpoint_url))
    assert fs.s3.meta.endpoint_url.startswith("http://127.0.0.1:")
    assert checkpoint_name(1) == "step-000000001"


def test_network_guard_refuses_anything_but_127_0_0_1(network_guard: NetworkGuard) -> None:
    """The guard itself (refused before any packet is sent)."""
    with pytest.raises(OSError, match="network guard"):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(OSError, match="network guard"):
        socket.create_connection(("192.0.2.1", 9), timeout=0.1)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="network guard"):
            probe.connect(("192.0.2.1", 9))
    finally:
        probe.close()
    assert len(network_guard.take()) == 3
