"""The process shell with real processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import psutil

from stalwart.host import process
from tests.conftest import wait_for
from tests.supervised import alive


def test_line_tail_prefixes_and_keeps_last_lines() -> None:
    sink = io.BytesIO()
    tail: deque[str] = deque(maxlen=2)
    lines = process.LineTail(sink, b"[j#0] ", tail)
    lines.feed(b"one\ntw")
    lines.feed(b"o\nthree\npartial")
    assert sink.getvalue() == b"[j#0] one\n[j#0] two\n[j#0] three\n"
    lines.close()
    assert sink.getvalue().endswith(b"[j#0] partial\n")
    assert list(tail) == ["three", "partial"]


def test_line_tail_unprefixed_passes_bytes_at_once() -> None:
    sink = io.BytesIO()
    tail: deque[str] = deque(maxlen=5)
    lines = process.LineTail(sink, b"", tail)
    lines.feed(b"50%\r")
    assert sink.getvalue() == b"50%\r"  # a progress bar is not held back
    lines.feed(b"100%\nbad \xff bytes\n")
    assert list(tail) == ["50%\r100%", "bad \ufffd bytes"]


def test_line_tail_splits_overlong_lines() -> None:
    tail: deque[str] = deque(maxlen=5)
    lines = process.LineTail(io.BytesIO(), b"> ", tail)
    lines.feed(b"x" * (process.LineTail.MAX_LINE_BYTES + 10))
    assert len(tail) == 1


def test_trainer_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a parent that spawns and vanishes takes the trainer with it."""
    pid_file = tmp_path / "pid"
    parent = textwrap.dedent(
        f"""
        import os, sys
        from stalwart.host import process
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        child = process.spawn(sleeper, os.environ, None)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", parent], check=True, timeout=30)
    pid = int(pid_file.read_text())
    wait_for(lambda: not alive(pid), 2.0, "the orphaned trainer to die")


def test_sentinel_kills_watched_group_when_supervisor_vanishes(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    parent = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from stalwart.host import process
        sentinel = process.Sentinel()
        group = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys, time;"
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             "time.sleep(60)"],
            start_new_session=True)
        sentinel.watch(group.pid)
        open({str(pid_file)!r}, "w").write(f"{{group.pid}} {{sentinel.pid}}")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", parent], check=True, timeout=30)
    leader, sentinel = (int(p) for p in pid_file.read_text().split())
    wait_for(lambda: not alive(leader) and not alive(sentinel), 2.0, "group and sentinel to go")


def test_forgotten_group_is_spared(tmp_path: Path) -> None:
    sentinel = process.Sentinel()
    victim = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        sentinel.watch(victim.pid)
        sentinel.forget(victim.pid)
        sentinel.close()
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_reap_exited_collects_orphans_as_subreaper() -> None:
    script = textwrap.dedent(
        """
        import os, subprocess, sys, time
        import psutil
        from stalwart.host import process
        process.set_child_subreaper(True)
        # A trainer whose own child outlives it and is orphaned to us.
        trainer = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c',"
            " 'import time; time.sleep(0.3)']); print(p.pid)"], stdout=subprocess.PIPE, text=True)
        orphan = int(trainer.communicate()[0])
        assert psutil.Process(orphan).ppid() == os.getpid(), "orphan was not reparented to us"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            process.reap_exited({})
            try:
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                print("orphan reaped")
                break
            time.sleep(0.01)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert "orphan reaped" in result.stdout, result.stderr


def test_signal_group_reports_missing_group() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    assert process.signal_group(proc.pid, 15) is False
    assert os.getpgid(os.getpid()) > 0


def test_tree_pids_finds_grandchildren_cheaply() -> None:
    from stalwart.host.resources import tree_pids

    script = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
        "print(p.pid, flush=True); time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert set(tree_pids(parent.pid)) == {parent.pid, grandchild}
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()
        parent.stdout.close()
