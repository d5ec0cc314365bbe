"""The launcher: torchrun's argv and this node's role (pure), the shared checkpoint directory
under concurrent supervisors, and torchrun under the real supervisor."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stalwart import config
from stalwart.checkpoint import QuarantineReason, quarantine
from stalwart.checkpoint.fsops import FsOps
from stalwart.checkpoint.pruning import apply_retention
from stalwart.errors import ConfigError
from stalwart.journal import Journal
from stalwart.paths import JOURNAL_NAME
from stalwart.policy.launcher import NodeRole, launch_argv, node_role
from stalwart.policy.retention import RetentionItem, RetentionPlan
from stalwart.types import CheckpointState
from tests.conftest import wait_for
from tests.supervised import alive, environment, records, stalwart_argv

TRAINERS = Path(__file__).parent / "trainers"
RANKED = TRAINERS / "ranked.py"
PY = "/opt/py/bin/python3"


def launcher(**fields: object) -> config.LauncherConfig:
    return config.LauncherConfig.model_validate(fields)


# argv (pure)


def test_direct_runs_the_command_as_is() -> None:
    command = ["python", "train.py", "--lr", "3e-4"]
    assert launch_argv(launcher(), command, job_name="j", node_rank=0, python=PY) == command


def test_single_node_script_runs_under_standalone_torchrun() -> None:
    argv = launch_argv(
        launcher(kind="torchrun", nproc_per_node=2),
        ["train.py", "--lr", "3e-4"],
        job_name="j",
        node_rank=0,
        python=PY,
    )
    assert argv == [
        PY,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--standalone",
        "--max-restarts",
        "0",
        "--node-rank",
        "0",
        "train.py",
        "--lr",
        "3e-4",
    ]


def test_multi_node_with_rendezvous_and_a_non_python_command() -> None:
    argv = launch_argv(
        launcher(
            kind="torchrun",
            nnodes=2,
            nproc_per_node=8,
            rdzv_endpoint="node0.cluster:29400",
            max_restarts=1,
            torchrun=["/venv/bin/torchrun"],
            args=["--local-addr", "10.0.0.2"],
        ),
        ["python", "-m", "pkg.train", "--lr", "1"],
        job_name="llm",
        node_rank=1,
        python=PY,
    )
    assert argv == [
        "/venv/bin/torchrun",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "8",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "node0.cluster:29400",
        "--rdzv-id",
        "llm",
        "--max-restarts",
        "1",
        "--node-rank",
        "1",
        "--local-addr",
        "10.0.0.2",
        "--no-python",
        "python",
        "-m",
        "pkg.train",
        "--lr",
        "1",
    ]


@pytest.mark.parametrize(
    ("command", "script", "no_python"),
    [
        (["train.py", "--lr", "3"], "train.py", False),
        (["python", "train.py", "--lr", "3"], "python", True),
        (["./run.sh", "--lr", "3"], "./run.sh", True),
    ],
)
def test_torchruns_own_parser_reads_our_argv(
    command: list[str], script: str, no_python: bool
) -> None:
    run = pytest.importorskip("torch.distributed.run")
    argv = launch_argv(
        launcher(
            kind="torchrun",
            nnodes=2,
            nproc_per_node=4,
            rdzv_endpoint="[fd00::1]:29400",
            rdzv_id="job-7",
            max_restarts=2,
        ),
        command,
        job_name="j",
        node_rank=1,
        python=PY,
    )
    assert argv[:3] == [PY, "-m", "torch.distributed.run"]
    args = run.parse_args(argv[3:])
    assert (args.nnodes, args.nproc_per_node) == ("2", "4")
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == (
        "c10d",
        "[fd00::1]:29400",
        "job-7",
    )
    assert (args.max_restarts, args.node_rank, args.standalone) == (2, 1, False)
    assert args.no_python is no_python
    assert args.training_script == script
    assert [args.training_script, *args.training_script_args] == command


# node role (pure)


def test_node_rank_from_config_then_environment() -> None:
    one = launcher()
    assert node_role(one, {}) == NodeRole(0, 1)
    assert node_role(one, {}).primary
    two = launcher(kind="torchrun", nnodes=2, rdzv_endpoint="h:1")
    assert node_role(two, {"STALWART_NODE_RANK": "1"}) == NodeRole(1, 2)
    assert not node_role(two, {"STALWART_NODE_RANK": " 1 "}).primary
    pinned = launcher(kind="torchrun", nnodes=2, rdzv_endpoint="h:1", node_rank=0)
    assert node_role(pinned, {"STALWART_NODE_RANK": "1"}) == NodeRole(0, 2)  # config wins
    assert NodeRole(1, 2).env() == {"STALWART_NODE_RANK": "1", "STALWART_NNODES": "2"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "rank is unknown"), ("2", "not a node of this job"), ("x", "not a node of this job")],
)
def test_multi_node_needs_a_valid_node_rank(value: str | None, expected: str) -> None:
    two = launcher(kind="torchrun", nnodes=2, rdzv_endpoint="h:1")
    environ = {} if value is None else {"STALWART_NODE_RANK": value}
    with pytest.raises(ConfigError) as caught:
        node_role(two, environ)
    assert expected in str(caught.value) and "STALWART_NODE_RANK" in str(caught.value)
    assert caught.value.exit_code == 2


# the shared checkpoint directory: supervisors of several nodes at once


def _checkpoint(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"w" * 64)
    return path


class _RacedOps(FsOps):
    """Lets another supervisor quarantine the same checkpoint just before our first move."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name, self.raced = root, name, False

    def _race(self) -> None:
        if not self.raced:
            self.raced = True
            quarantine(self.root, self.name, QuarantineReason.CORRUPT, detail="other node")

    def replace(self, src: Path, dst: Path) -> None:
        self._race()
        super().replace(src, dst)

    def mkdir(self, path: Path) -> None:
        if path.parent.name == ".quarantine":
            self._race()
        super().mkdir(path)


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_concurrent_quarantine_of_the_same_checkpoint(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ck"
    if kind == "directory":
        _checkpoint(root, "step-000000005")
        name = "step-000000005"
    else:
        root.mkdir()
        (root / "model-5.ckpt").write_bytes(b"x" * 10)
        (root / "model-5.ckpt.MANIFEST.json").write_text("{}")
        name = "model-5.ckpt"
    (root / ".quarantine").mkdir()
    caplog.set_level("INFO", logger="stalwart.checkpoint.quarantine")
    ours = quarantine(root, name, QuarantineReason.CORRUPT, ops=_RacedOps(root, name))
    assert ours.concurrent
    assert ours.destination == root / ".quarantine" / f"{name}-corrupt"
    assert "another supervisor" in ours.detail
    assert os.listdir(root / ".quarantine") == [f"{name}-corrupt"]
    assert sorted(os.listdir(root)) == [".quarantine"]
    if kind == "file":
        assert sorted(os.listdir(ours.destination)) == [name, f"{name}.MANIFEST.json"]
    assert any(
        r.levelname == "INFO" and "quarantined by another supervisor" in r.message
        for r in caplog.records
    )


def test_quarantine_of_a_vanished_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    _checkpoint(root, "step-000000005")
    first = quarantine(root, "step-000000005", QuarantineReason.POISON)
    assert not first.concurrent
    # The other node finds it gone, already quarantined: not an error.
    second = quarantine(root, "step-000000005", QuarantineReason.CORRUPT)
    assert second.concurrent and second.destination == first.destination
    # Never there at all: still the caller's mistake.
    with pytest.raises(FileNotFoundError):
        quarantine(root, "step-000000009", QuarantineReason.CORRUPT)


def test_retention_skips_entries_that_vanished(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    items = [
        RetentionItem(name, _checkpoint(root, name), step, 64, CheckpointState.INTACT)
        for step, name in [(1, "step-000000001"), (2, "step-000000002")]
    ]
    quarantine(root, "step-000000001", QuarantineReason.CORRUPT)  # by another node
    plan = RetentionPlan(tuple(items), (), (), 0, ())
    assert apply_retention(root, plan) == [root / "step-000000002"]
    assert sorted(os.listdir(root)) == [".quarantine"]


# under the real supervisor


def _supervise(
    tmp_path: Path, runtime_dir: Path, options: list[str], trainer: list[str]
) -> subprocess.Popen[str]:
    argv = stalwart_argv(
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--ckpt-dir",
        str(tmp_path / "ck"),
        "--set",
        "restart.backoff_initial_s=0.05",
        *options,
        "--",
        *trainer,
    )
    # torchrun's agent leaves a log directory in TMPDIR per attempt: keep it in tmp_path.
    (tmp_path / "tmp").mkdir()
    env = {**environment(runtime_dir), "TMPDIR": str(tmp_path / "tmp")}
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


TORCHRUN = [
    "--set",
    "launcher.kind=torchrun",
    "--set",
    "launcher.nproc_per_node=2",
]
HANG = [
    "--set",
    "hang.floor_s=3",
    "--set",
    "hang.factor=3",
    "--set",
    "hang.warmup_heartbeats=3",
    "--set",
    "hang.first_step_s=20",
    "--set",
    "hang.dump_wait_s=1",
]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torchrun_rank_falls_silent_is_a_hang_and_every_worker_dies(
    tmp_path: Path, runtime_dir: Path
) -> None:
    record = tmp_path / "workers.jsonl"
    supervisor = _supervise(
        tmp_path,
        runtime_dir,
        [*TORCHRUN, *HANG],
        [str(RANKED), "--silent-rank", "1", "--silent-at", "10", "--record", str(record)],
    )
    try:
        stdout, stderr = supervisor.communicate(timeout=100)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode == 0, stderr
    hung = re.search(r"is hung: no heartbeat from rank (\d) \(of 2 ranks\) for ([\d.]+) s", stderr)
    assert hung is not None, stderr
    assert hung[1] == "1"
    workers = records(record)
    assert sorted((w["attempt"], w["rank"]) for w in workers) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for worker in workers:
        env = worker["env"]
        assert (env["STALWART_NODE_RANK"], env["STALWART_NNODES"]) == ("0", "1")
        assert env["WORLD_SIZE"] == "2" and env["STALWART_ATTEMPT"] == str(worker["attempt"])
        assert not alive(worker["pid"])
    # Rank 0 kept heartbeating while rank 1 was silent: the slowest rank decided.
    assert "rank 1 goes silent at step 10" in stdout and "rank 0 attempt 0 done" not in stdout
    assert "rank 0 attempt 1 done" in stdout and "rank 1 attempt 1 done" in stdout
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
    assert [a.kind for a in attempts] == ["HANG", "COMPLETED"]
    # Both workers (not the agent) were asked for their stacks before the kill.
    dumps = {p.name for p in (tmp_path / "state" / "dumps").glob("stacks-*.txt")}
    attempt0 = {f"stacks-{w['pid']}.txt" for w in workers if w["attempt"] == 0}
    assert attempt0 <= dumps
    silent = next(w for w in workers if (w["attempt"], w["rank"]) == (0, 1))
    assert "ranked.py" in (tmp_path / "state" / "dumps" / f"stacks-{silent['pid']}.txt").read_text()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_no_torchrun_worker_outlives_the_supervisor(
    tmp_path: Path, runtime_dir: Path, how: str
) -> None:
    """torchrun starts each worker in a session of its own, outside the trainer's group."""
    record = tmp_path / "workers.jsonl"
    supervisor = _supervise(
        tmp_path,
        runtime_dir,
        [*TORCHRUN, "--set", "stop.grace_s=10"],
        [str(RANKED), "--steps", "100000", "--record", str(record)],
    )
    try:
        wait_for(lambda: len(records(record)) == 2, 60, "both workers to start")
        pids = [w["pid"] for w in records(record)]
        assert all(os.getsid(pid) == pid for pid in pids)  # sessions of their own
        # Once the supervisor has heard both ranks it has told the sentinel their groups.
        wait_for(lambda: _status(tmp_path).get("ranks") == 2, 30, "both ranks to heartbeat")
        if how == "stop":
            supervisor.send_signal(signal.SIGTERM)
            _, stderr = supervisor.communicate(timeout=60)
            assert supervisor.returncode == 0, stderr
            assert "stopped on request" in stderr
        else:
            supervisor.kill()  # outright death: only the sentinel is left to clean up
            supervisor.communicate(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in pids), 15, "the workers to die")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()


def _status(tmp_path: Path) -> dict[str, object]:
    result = subprocess.run(
        stalwart_argv("status", "--state-dir", str(tmp_path / "state"), "--json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return json.loads(result.stdout) if result.returncode == 0 else {}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("node", [0, 1])
def test_only_the_primary_node_prunes_the_shared_directory(
    tmp_path: Path, runtime_dir: Path, node: int
) -> None:
    record = tmp_path / "a.jsonl"
    trainer = [sys.executable, str(TRAINERS / "storer.py"), "--record", str(record), "--saves"]
    # Another node's save in progress, and a prune the primary was doing when it died.
    saving = tmp_path / "ck" / ".staging-step-000000099-4242"
    pruning = tmp_path / "ck" / ".deleting-step-000000001-4242"
    for leftover in (saving, pruning):
        leftover.mkdir(parents=True)
        (leftover / "part").write_bytes(b"x")
    supervisor = _supervise(
        tmp_path,
        runtime_dir,
        [
            "--set",
            "launcher.nnodes=2",
            "--set",
            f"launcher.node_rank={node}",
            "--set",
            "checkpoint.keep_last=1",
        ],
        [*trainer, "5", *(["--wait-for-at-most", "1"] if node == 0 else [])],
    )
    _, stderr = supervisor.communicate(timeout=50)
    assert supervisor.returncode == 0, stderr
    steps = sorted(p.name for p in (tmp_path / "ck").glob("step-*"))
    assert saving.is_dir()  # a node never removes a save that may be another node's
    if node == 0:
        assert steps == ["step-000000005"]
        assert not pruning.exists()
    else:
        assert len(steps) == 5 and "pruned checkpoint" not in stderr
        assert pruning.is_dir()


def test_a_launcher_lingering_after_its_workers_left_for_a_peer_is_stopped_and_relaunched(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """PEER_DRAIN=1: another node drained the job. The launcher (torchrun's agent at its
    exit barrier) is stopped after `launcher.peer_exit_s`, and the attempt counts as that
    node's preemption: relaunched with no budget spent, not taken for the end of training."""
    supervisor = _supervise(
        tmp_path,
        runtime_dir,
        ["--set", "launcher.peer_exit_s=0.5", "--set", "restart.max_restarts=0"],
        [sys.executable, str(TRAINERS / "peer_left.py")],
    )
    _, stderr = supervisor.communicate(timeout=50)
    assert supervisor.returncode == 0, stderr
    assert "still waiting for that node" in stderr
    with sqlite3.connect(tmp_path / "state" / JOURNAL_NAME) as db:
        kinds = [kind for (kind,) in db.execute("SELECT kind FROM attempts ORDER BY attempt")]
    assert kinds == ["PREEMPTED", "COMPLETED"]
