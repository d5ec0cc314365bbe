"""The notify protocol and the trainer-side client, over a real socket and advice file."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from stalwart.channels.advice_file import Advice, write_advice
from stalwart.channels.notify_socket import NotifySocket, parse
from stalwart.client import DEFAULT_INTERVAL_S, Client


def test_parse_known_unknown_and_malformed() -> None:
    message = parse(b"STEP=12\nSTATUS=loss 0.3\nFOO=bar\nnonsense\nCKPT_STALL_S=nan\nCKPT_BYTES=10")
    assert message.fields == {"STEP": 12, "STATUS": "loss 0.3", "CKPT_BYTES": 10}
    assert message.malformed == 2


@given(st.binary(max_size=512))
def test_parse_never_raises(data: bytes) -> None:
    message = parse(data)
    assert message.malformed >= 0


def test_client_reports_reach_the_socket(runtime_dir: Path) -> None:
    server = NotifySocket(runtime_dir / "n.sock")
    env = {"STALWART_NOTIFY_SOCKET": str(server.path), "STALWART_ATTEMPT": "2"}
    try:
        with Client(env) as client:
            assert client.supervised and client.attempt == 2
            client.ready()
            client.step(7)
            client.checkpoint_done(7, stall_s=0.25, persist_s=1.5, size_bytes=99, path="/c/step-7")
        got = [m.fields for m in server.receive()]
        assert got == [
            {"READY": 1},
            {"STEP": 7},
            {
                "CKPT_STALL_S": 0.25,
                "CKPT_PERSIST_S": 1.5,
                "CKPT_BYTES": 99,
                "CKPT_DONE": "/c/step-7",
            },
        ]
        assert (os.stat(server.path).st_mode & 0o777) == 0o600
    finally:
        server.close()


def test_datagrams_from_other_users_are_ignored(runtime_dir: Path) -> None:
    if os.getuid() != 0:
        import pytest

        pytest.skip("needs root to send as another user")
    server = NotifySocket(runtime_dir / "n.sock")
    os.chmod(runtime_dir, 0o755)
    os.chmod(server.path, 0o666)  # let the intruder reach it at all
    intruder = textwrap.dedent(
        f"""
        import os, socket
        os.setgid(65534); os.setuid(65534)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"STEP=999", {str(server.path)!r})
        """
    )
    try:
        subprocess.run([sys.executable, "-c", intruder], check=True, timeout=30)
        with Client({"STALWART_NOTIFY_SOCKET": str(server.path)}) as client:
            client.step(1)
        assert [m.fields for m in server.receive()] == [{"STEP": 1}]
        assert server.foreign_total == 1
    finally:
        server.close()


CLOCK_OFFSETS = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)
"""Where an injected clock starts: any value the monotonic clock could have."""


@given(start_s=CLOCK_OFFSETS)
@example(start_s=1000.7)  # (1000.7 + 1800) - 1000.7 < 1800: the old check said "not yet"
def test_standalone_client_is_a_no_op(start_s: float) -> None:
    now = [start_s]
    with Client({}, clock=lambda: now[0]) as client:
        assert not client.supervised
        client.step(1)
        client.ready()
        assert not client.should_checkpoint(1, now_s=start_s + 10)
        assert client.should_checkpoint(1, now_s=start_s + DEFAULT_INTERVAL_S)
        assert not client.should_exit()


@given(start_s=CLOCK_OFFSETS, interval_s=st.floats(min_value=1e-3, max_value=1e6))
@example(start_s=1000.7, interval_s=1800.0)
def test_a_save_is_due_exactly_one_interval_after_the_last(
    start_s: float, interval_s: float
) -> None:
    """The due time is last save + interval to the last bit, whatever the clock reads."""
    now = [start_s]
    with tempfile.TemporaryDirectory() as tmp:
        advice_path = Path(tmp) / "advice.json"
        write_advice(advice_path, Advice(interval_s=interval_s))
        client = Client({"STALWART_ADVICE_FILE": str(advice_path)}, clock=lambda: now[0])
        due_s = start_s + interval_s
        assert not client.should_checkpoint(1, now_s=math.nextafter(due_s, -math.inf))
        assert client.should_checkpoint(1, now_s=due_s)
        now[0] = due_s
        assert client.should_checkpoint(1)
        client.saved(1)
        assert not client.should_checkpoint(2)
        client.close()


def test_advice_interval_checkpoint_now_and_drain(tmp_path: Path) -> None:
    advice_path = tmp_path / "advice.json"
    write_advice(advice_path, Advice(interval_s=100.0))
    now = [0.0]
    client = Client({"STALWART_ADVICE_FILE": str(advice_path)}, clock=lambda: now[0])
    assert client.interval_s == 100.0
    assert not client.should_checkpoint(1)
    now[0] = 100.0
    assert client.should_checkpoint(2)
    client.saved(2)
    assert not client.should_checkpoint(3)
    write_advice(advice_path, Advice(interval_s=100.0, checkpoint_now=1))
    assert client.should_checkpoint(3)  # asked for one now
    client.saved(3)
    assert not client.should_checkpoint(4)
    write_advice(advice_path, Advice(interval_s=100.0, checkpoint_now=1, drain=True))
    assert client.should_checkpoint(4) and not client.should_exit()
    client.saved(4)
    assert client.should_exit()
    client.close()


def test_advice_parsed_only_when_changed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    advice_path = tmp_path / "advice.json"
    write_advice(advice_path, Advice(interval_s=5.0))
    client = Client({"STALWART_ADVICE_FILE": str(advice_path)}, clock=lambda: 0.0)
    opened: list[str] = []
    real_open = open

    def counting_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(args[0]))
        return real_open(*args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    for step in range(100):
        client.should_checkpoint(step)
    assert opened == []
    write_advice(advice_path, Advice(interval_s=7.0))
    assert client.interval_s == 7.0
    assert opened == [str(advice_path)]
    client.close()


def test_parse_rank() -> None:
    assert parse(b"STEP=4\nRANK=3").fields == {"STEP": 4, "RANK": 3}
    assert parse(b"STEP=4\nRANK=three").malformed == 1


def test_client_under_torchrun_names_its_rank_in_every_datagram(runtime_dir: Path) -> None:
    server = NotifySocket(runtime_dir / "n.sock")
    clock = iter([0.0, 0.05, 0.2, 0.3])
    env = {"STALWART_NOTIFY_SOCKET": str(server.path), "RANK": "5", "LOCAL_RANK": "1"}
    try:
        with Client(env, clock=lambda: next(clock), dump_stacks=False) as client:
            client.ready()
            client.step(1)  # t=0.05: sent (first heartbeat)
            client.step(2)  # t=0.2: sent (0.15 s later)
            client.checkpoint_begin(2)
            client.checkpoint_done(2, stall_s=0.5)
        got = [m.fields for m in server.receive()]
        assert got == [
            {"READY": 1, "RANK": 5},
            {"STEP": 1, "RANK": 5},
            {"STEP": 2, "RANK": 5},
            {"CKPT_BEGIN": 2, "RANK": 5},
            {"CKPT_STALL_S": 0.5, "CKPT_DONE": "2", "RANK": 5},
        ]
        for rank in ("", "x", "-1"):  # no usable RANK: the implicit single rank, as before
            with Client({**env, "RANK": rank}, dump_stacks=False) as client:
                client.ready()
            assert [m.fields for m in server.receive()] == [{"READY": 1}]
    finally:
        server.close()
