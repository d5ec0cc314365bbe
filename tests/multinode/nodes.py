"""Supervisors standing in for nodes: each `stalwart run` with its output in a file (never a
pipe nobody reads), and on a timeout every process's stacks and every node's log in the
failure message: the workers' Python stacks through the client's SIGUSR2 handler, the
launchers' and supervisors' through faulthandler on SIGABRT."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.supervised import environment, stalwart_argv


@dataclass
class Node:
    """One node's supervisor: its process, where its output goes, its state directory."""

    popen: subprocess.Popen[bytes]
    log: Path
    state_dir: Path

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)


def launch(argv: list[str], cwd: Path, runtime_dir: Path, scratch: Path, log: Path) -> Node:
    """Start `stalwart run` (argv) with its output appended to `log`."""
    scratch.mkdir(exist_ok=True)
    env = environment(runtime_dir)
    env["TMPDIR"] = str(scratch)
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT on a timeout prints every Python stack
    state_dir = cwd / log.stem
    with log.open("ab") as sink:
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return Node(popen, log, state_dir)


def stalwart_run(config: Path) -> list[str]:
    return stalwart_argv("run", str(config))


def stacks_and_logs(nodes: Iterable[Node]) -> str:
    """Every worker's stacks (SIGUSR2, caught by the stalwart client), then every other
    process's (SIGABRT with faulthandler: this ends them), then each node's log."""
    nodes = list(nodes)
    trees: list[list[psutil.Process]] = []
    for node in nodes:
        try:
            root = psutil.Process(node.popen.pid)
            trees.append([root, *root.children(recursive=True)])
        except psutil.Error:
            trees.append([])
    for tree in trees:
        for process in tree:
            with contextlib.suppress(psutil.Error):
                if _catches(process.pid, signal.SIGUSR2):
                    process.send_signal(signal.SIGUSR2)
    time.sleep(1.0)  # faulthandler writes from the signal handler; give it a moment
    for tree in trees:
        for process in reversed(tree):  # workers first: their launcher would kill them
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGABRT)
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.popen.wait(timeout=20)
    parts = []
    for node in nodes:
        for dump in sorted((node.state_dir / "dumps").glob("stacks-*.txt")):
            parts.append(f"==== {node.log.stem} {dump.name}\n{dump.read_text(errors='replace')}")
        parts.append(f"==== {node.log.name}\n{node.output()[-15000:]}")
    return "\n".join(parts)


def _catches(pid: int, signum: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    except OSError:
        pass
    return False


def fail_with_stacks(nodes: Iterable[Node], why: str) -> None:
    pytest.fail(f"{why}; stacks and logs:\n{stacks_and_logs(nodes)}")


def wait_or_dump(
    predicate: Callable[[], object], timeout_s: float, what: str, nodes: Iterable[Node]
) -> None:
    """Poll `predicate`; on a timeout fail with every node's stacks and log."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            fail_with_stacks(nodes, f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def finish(nodes: list[Node], timeout_s: float) -> list[str]:
    """Wait for every node to exit 0 (their outputs); on a timeout fail with the stacks."""
    deadline = time.monotonic() + timeout_s
    try:
        for node in nodes:
            try:
                node.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                fail_with_stacks(nodes, f"the nodes did not finish in {timeout_s} s")
    finally:
        stop(nodes)
    for node in nodes:
        assert node.returncode == 0, node.output()[-4000:]
    return [node.output() for node in nodes]


def stop(nodes: Iterable[Node]) -> None:
    """End what is still running (SIGINT, then SIGKILL) and reap it."""
    for node in nodes:
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.popen.kill()
                node.popen.wait(timeout=30)
