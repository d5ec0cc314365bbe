"""The sender thread against a local JSON endpoint: delivery, retries, a handoff that
never blocks, and URLs checked before anything starts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from stalwart.errors import UsageError
from stalwart.notify.config import NotifyConfig, NotifyEvent
from stalwart.notify.message import Message
from stalwart.notify.sender import Sender, Target, build_targets
from tests.notify.collector import Collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


def message(text: str = "hello") -> Message:
    return Message(NotifyEvent.FAILURE, "title", text, "warning")


def section(*urls: str, **changes: object) -> NotifyConfig:
    return NotifyConfig(urls=[SecretStr(u) for u in urls], **changes)  # type: ignore[arg-type]


def test_delivers_through_apprise_json(collector: Collector) -> None:
    config = section(collector.url())
    sender = Sender(build_targets(config, {}), config)
    assert sender.submit(message("job: x"))
    sender.close()
    (post,) = collector.posts
    assert post["message"] == "job: x" and post["title"] == "title" and post["type"] == "warning"
    assert sender.snapshot() == {("failure", "sent"): 1}


def test_a_failed_delivery_is_retried_then_counted_never_raised() -> None:
    refusing = Collector(status=500)
    try:
        config = section(refusing.url(), retries=2, retry_wait_s=0.0)
        sender = Sender(build_targets(config, {}), config)
        sender.submit(message())
        sender.close()
        assert len(refusing.posts) == 3
        assert sender.snapshot() == {("failure", "failed"): 1}
    finally:
        refusing.close()


def test_the_handoff_never_blocks_on_a_stuck_delivery() -> None:
    """The sender is stuck in a delivery; submitting more than the queue holds returns at
    once (the rest are dropped and counted). Were `submit` blocking, the thread below
    would still be waiting when joined."""
    release, entered = threading.Event(), threading.Event()

    def stuck(_: Message) -> bool:
        entered.set()
        release.wait(30)
        return True

    config = section("json://unused", queue_max=4, flush_timeout_s=5)
    sender = Sender([Target("notify.urls[0]", "json://stuck", stuck)], config)
    sender.submit(message())
    assert entered.wait(10)
    submitter = threading.Thread(target=lambda: [sender.submit(message()) for _ in range(10)])
    submitter.start()
    submitter.join(10)
    blocked = submitter.is_alive()
    release.set()
    submitter.join()
    sender.close()
    assert not blocked
    assert sender.snapshot()[("failure", "dropped")] == 10 - 4


def test_a_url_apprise_does_not_understand_is_a_usage_error_naming_the_key() -> None:
    with pytest.raises(UsageError, match=r"notify\.urls\[1\]: apprise does not understand") as e:
        build_targets(section("json://127.0.0.1:1/x", "slak://T0KEN-SECRET/abc"), {})
    assert "T0KEN-SECRET" not in str(e.value) and "slak://" in str(e.value)


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path, collector: Collector) -> None:
    (tmp_path / "url").write_text(collector.url("from-file") + "\n")
    config = section("env:HOOK_URL", f"file:{tmp_path / 'url'}")
    targets = build_targets(config, {"HOOK_URL": collector.url("from-env")})
    assert [t.key for t in targets] == ["notify.urls[0]", "notify.urls[1]"]
    with pytest.raises(UsageError, match=r"notify\.urls\[0\]: environment variable HOOK_URL"):
        build_targets(config, {})
    with pytest.raises(UsageError, match=r"notify\.urls\[0\]: cannot read"):
        build_targets(section(f"file:{tmp_path / 'missing'}"), {})


def test_dumped_config_never_shows_a_url() -> None:
    from stalwart import config

    job = config.validate({"command": ["true"], "notify": {"urls": ["slack://TOKEN/B/C"]}}, "test")
    assert "TOKEN" not in config.dump(job)
