"""Two "nodes" on this machine: two supervisors, each running torchrun with --nnodes=2
--nproc-per-node=1 and a c10d rendezvous on 127.0.0.1, over one shared checkpoint
directory. One rank is SIGKILLed; both sides recover and resume from the same checkpoint,
and the final state equals an uninterrupted run's bit for bit. A truncated shard makes
the newest checkpoint not intact on every node, and both resume from the one before."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stalwart.checkpoint.layout import parse_step
from stalwart.paths import JOURNAL_NAME
from tests.multinode.nodes import Node, finish, launch, stalwart_run, stop, wait_or_dump
from tests.supervised import environment, records, stalwart_argv
from tests.torchrun import run_two_ranks

TRAINER = Path(__file__).parents[1] / "trainers" / "ddp_train.py"
STEPS, MORE_STEPS = 60, 80


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def runtime_dirs() -> Iterator[tuple[Path, Path]]:
    made = [Path(tempfile.mkdtemp(prefix="sw-rt-", dir="/tmp")) for _ in range(2)]
    yield made[0], made[1]
    for path in made:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def node_config(
    tmp_path: Path,
    node: int,
    port: int,
    steps: int,
    *,
    nnodes: int = 2,
    nproc: int = 1,
    step_s: float = 0.05,
) -> Path:
    out = tmp_path / "out"
    trainer = [str(TRAINER), "--steps", str(steps), "--out", str(out), "--step-s", str(step_s)]
    config: dict[str, Any] = {
        "name": "two-nodes",
        "command": [sys.executable, *trainer, "--digest-at", str(STEPS)],
        "state_dir": str(tmp_path / f"node{node}"),
        "env": {"OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "scratch")},
        "checkpoint": {
            "dir": str(tmp_path / "ckpt"),
            "keep_last": 50,
            "interval": {"mode": "fixed", "fixed_interval_s": 0.4, "min_interval_s": 0.1},
        },
        "restart": {"backoff_initial_s": 0.2, "backoff_max_s": 0.5},
        "launcher": {"kind": "torchrun", "nnodes": nnodes, "nproc_per_node": nproc},
    }
    if nnodes > 1:
        config["launcher"] |= {"rdzv_endpoint": f"127.0.0.1:{port}", "node_rank": node}
    path = tmp_path / f"node{node}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_node(
    tmp_path: Path, runtime_dirs: tuple[Path, Path], node: int, port: int, **options: Any
) -> Node:
    config = node_config(tmp_path, node, port, **options)
    log = tmp_path / f"node{node}.log"
    return launch(stalwart_run(config), tmp_path, runtime_dirs[node], tmp_path / "scratch", log)


def start_nodes(tmp_path: Path, runtime_dirs: tuple[Path, Path], steps: int) -> list[Node]:
    port = free_port()
    return [start_node(tmp_path, runtime_dirs, node, port, steps=steps) for node in (0, 1)]


def rank_records(out: Path) -> list[dict[str, Any]]:
    return [r for rank in (0, 1) for r in records(out / f"rank-{rank}.jsonl")]


def checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob("step-*"), key=lambda p: parse_step(p.name) or -1, reverse=True)


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """The digest at STEPS and MORE_STEPS of a run nothing interrupts (no supervisor)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    out = tmp_path / "baseline"
    args = ["--steps", str(MORE_STEPS), "--out", str(out), "--digest-at", str(STEPS)]
    run_two_ranks(tmp_path / "scratch", TRAINER, *args, "--ckpt-dir", str(tmp_path / "ckpt"))
    digests: dict[int, set[str]] = {}
    for r in rank_records(out):
        if r["event"] in ("digest", "final"):
            digests.setdefault(int(r["step"]), set()).add(str(r["digest"]))
    assert all(len(found) == 1 for found in digests.values())  # the replicas agree
    return {step: found.pop() for step, found in digests.items()}


@pytest.mark.timeout(420)
def test_two_nodes_recover_from_a_killed_rank_and_a_truncated_shard(
    tmp_path: Path, runtime_dirs: tuple[Path, Path], expected: dict[int, str]
) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"

    nodes = start_nodes(tmp_path, runtime_dirs, STEPS)
    wait_or_dump(lambda: len(checkpoints(ckpt)) >= 2, 120, "two sharded checkpoints", nodes)
    victim = max(r["pid"] for r in records(out / "rank-1.jsonl") if r["event"] == "start")
    os.kill(victim, signal.SIGKILL)
    finish(nodes, timeout_s=240)

    # Every rank started again after the kill, and both nodes resumed the same checkpoint.
    starts = {
        rank: [r for r in records(out / f"rank-{rank}.jsonl") if r["event"] == "start"]
        for rank in (0, 1)
    }
    assert all(len(found) >= 2 and found[0]["resumed_from"] is None for found in starts.values())
    resumed = {found[1]["resumed_from"] for found in starts.values()}
    assert len(resumed) == 1 and None not in resumed, starts
    finals = {r["digest"] for r in rank_records(out) if r["event"] == "final"}
    assert finals == {expected[STEPS]}

    # A truncated shard: the newest checkpoint is not intact on any node.
    newest, previous = checkpoints(ckpt)[:2]
    shard = next(newest.glob("__*_0.distcp"))
    os.truncate(shard, shard.stat().st_size // 2)
    for log in out.glob("rank-*.jsonl"):
        log.unlink()
    unfinished = ckpt / ".staging-step-000000099-4242"  # a save that never committed
    unfinished.mkdir()
    finish(start_nodes(tmp_path, runtime_dirs, MORE_STEPS), timeout_s=180)
    again = [r for r in rank_records(out) if r["event"] == "start"]
    assert {r["resumed_from"] for r in again} == {previous.name}, again
    finals = {r["digest"] for r in rank_records(out) if r["event"] == "final"}
    assert finals == {expected[MORE_STEPS]}
    assert any((ckpt / ".quarantine").glob(f"{newest.name}-*"))
    assert not unfinished.exists()  # removed by rank 0 once every rank was resuming


@pytest.mark.timeout(240)
def test_two_ranks_on_one_node_save_at_the_interval_and_report_each_save_once(
    tmp_path: Path, runtime_dirs: tuple[Path, Path]
) -> None:
    """Only local rank 0 reports a save, but every rank restarts its interval clock: a rank
    that did not would ask for a save at every step, and the others would follow it."""
    config = node_config(tmp_path, 0, 0, 60, nnodes=1, nproc=2)
    env = environment(runtime_dirs[0])
    (tmp_path / "scratch").mkdir()
    done = subprocess.run(
        stalwart_argv("run", str(config)),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    saved = checkpoints(tmp_path / "ckpt")
    assert 1 <= len(saved) <= 15, [p.name for p in saved]  # 60 steps of 50 ms, every 0.4 s
    with sqlite3.connect(tmp_path / "node0" / JOURNAL_NAME) as db:
        rows = db.execute("SELECT step FROM checkpoints WHERE source = 'trainer'").fetchall()
    steps = [step for (step,) in rows]
    assert len(steps) == len(set(steps))  # one report per save, not one per rank
    assert {parse_step(p.name) for p in saved} <= set(steps)


@pytest.mark.timeout(300)
def test_a_node_stopped_leaves_the_other_waiting_and_both_finish_when_it_returns(
    tmp_path: Path, runtime_dirs: tuple[Path, Path], expected: dict[int, str]
) -> None:
    """Stopping one node (its preemption, or `stalwart stop`) drains the whole job: every
    rank saves the same step. The other node's trainer leaves with PEER_DRAIN=1 and its
    supervisor relaunches it to wait at the rendezvous, not to call the job finished.

    Node 1 starts first, so its agent hosts the rendezvous store: after the drain that
    agent waits at torchrun's exit barrier, deaf to SIGTERM, and a node 0 coming back would
    join its old round and fail with it. The lingering launcher is killed instead, and no
    attempt fails: node 0 stopped then completed, node 1 preempted (no budget) then
    completed."""
    out, ckpt, port = tmp_path / "out", tmp_path / "ckpt", free_port()
    node1 = start_node(tmp_path, runtime_dirs, 1, port, steps=STEPS, step_s=0.1)
    node0 = node1
    try:
        wait_or_dump(lambda: listening(port), 60, "node 1's agent to host the store", [node1])
        node0 = start_node(tmp_path, runtime_dirs, 0, port, steps=STEPS, step_s=0.1)
        wait_or_dump(lambda: len(checkpoints(ckpt)) >= 1, 120, "a checkpoint", [node0, node1])
        node0.send_signal(signal.SIGTERM)
        finish([node0], timeout_s=60)
        wait_or_dump(
            lambda: len([r for r in rank_records(out) if r["event"] == "drained"]) == 2,
            30,
            "both ranks to drain",
            [node0, node1],
        )
        drained = {r["step"] for r in rank_records(out) if r["event"] == "drained"}
        assert len(drained) == 1 and min(drained) < STEPS  # one step, saved on every rank
        # Relaunched (its old launcher and store gone), waiting for node 0 at the rendezvous.
        relaunched = "attempt 1 started"
        wait_or_dump(lambda: relaunched in node1.output(), 60, "node 1's relaunch", [node1])
        node0 = start_node(tmp_path, runtime_dirs, 0, port, steps=STEPS, step_s=0.1)
        finish([node0, node1], timeout_s=180)
    finally:
        stop([node0, node1])
    starts = [r for r in rank_records(out) if r["event"] == "start"]
    resumed = {r["resumed_from"] for r in starts if r["resumed_from"] is not None}
    # Both nodes resumed from the step they drained at: no work lost, none done twice.
    assert {parse_step(name) for name in resumed} == drained, starts
    finals = {r["digest"] for r in rank_records(out) if r["event"] == "final"}
    assert finals == {expected[STEPS]}
    assert attempts(tmp_path, 0) == ["STOPPED", "COMPLETED"]
    assert attempts(tmp_path, 1) == ["PREEMPTED", "COMPLETED"]


def attempts(tmp_path: Path, node: int) -> list[str]:
    """The kinds of the attempts node `node` ended so far, in order (from its journal)."""
    journal = tmp_path / f"node{node}" / JOURNAL_NAME
    if not journal.exists():
        return []
    with sqlite3.connect(journal) as db:
        rows = db.execute(
            "SELECT kind FROM attempts WHERE kind IS NOT NULL ORDER BY attempt"
        ).fetchall()
    return [kind for (kind,) in rows]
