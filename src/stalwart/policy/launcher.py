"""How the trainer is started: the command as is, or under torchrun. Pure: no I/O.

Multi-node jobs run one stalwart per node, each wrapping that node's torchrun agent.
stalwart restarts the agent (and so every worker of the node) on any failure; torchrun's
own in-node restarts stay off by default (`launcher.max_restarts: 0`), so every restart
resumes from the newest verified checkpoint and is journaled.

The command becomes torchrun's training program in one of two ways, as torchrun itself
distinguishes them:
- `command[0]` ends in `.py`: torchrun runs the script with its own interpreter
  (`python -u script.py ...`; `PYTHON_EXEC` overrides it);
- anything else (`python train.py`, `python -m pkg.train`, `./train.sh`): `--no-python`,
  each worker runs the command exactly as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stalwart.config import LauncherConfig
from stalwart.errors import ConfigError

ENV_NODE_RANK = "STALWART_NODE_RANK"
"""This node's rank: read when `launcher.node_rank` is unset, passed to the trainer always."""
ENV_NNODES = "STALWART_NNODES"
"""The number of nodes, passed to the trainer."""
TORCHRUN_MODULE = "torch.distributed.run"
"""What `torchrun` runs; started as `<python> -m torch.distributed.run` by default."""


@dataclass(frozen=True)
class NodeRole:
    """Which node this supervisor runs on. Node 0 (or the only node) is the primary: it alone
    prunes the shared checkpoint directory, adopts foreign checkpoints and keeps the remote
    copy; every node verifies, quarantines and resumes."""

    node_rank: int = 0
    nnodes: int = 1

    @property
    def primary(self) -> bool:
        return self.node_rank == 0

    def env(self) -> dict[str, str]:
        """The trainer's STALWART_NODE_RANK and STALWART_NNODES."""
        return {ENV_NODE_RANK: str(self.node_rank), ENV_NNODES: str(self.nnodes)}


def node_role(config: LauncherConfig, environ: Mapping[str, str]) -> NodeRole:
    """This node's rank: `launcher.node_rank`, else $STALWART_NODE_RANK, else 0 on one node.

    Raises ConfigError (exit 2, nothing started) when a multi-node job cannot tell which
    node it is, or the environment names a node outside the job.
    """
    nnodes = config.nnodes
    if config.node_rank is not None:
        return NodeRole(config.node_rank, nnodes)
    raw = environ.get(ENV_NODE_RANK, "").strip()
    if not raw:
        if nnodes == 1:
            return NodeRole(0, 1)
        raise ConfigError(
            "launcher.node_rank",
            [
                f"launcher.nnodes is {nnodes} but this node's rank is unknown: set "
                f"launcher.node_rank, or {ENV_NODE_RANK}=<0..{nnodes - 1}> in this node's "
                "environment (e.g. Environment= in a drop-in of the systemd unit)"
            ],
        )
    try:
        rank = int(raw)
    except ValueError:
        rank = -1
    if not 0 <= rank < nnodes:
        raise ConfigError(
            "launcher.node_rank",
            [
                f"{ENV_NODE_RANK}={raw!r} is not a node of this job: it must be a whole number "
                f"from 0 to {nnodes - 1} (launcher.nnodes is {nnodes})"
            ],
        )
    return NodeRole(rank, nnodes)


def runs_as_script(command: Sequence[str]) -> bool:
    """torchrun runs a `.py` command[0] with its own python; anything else with --no-python."""
    return command[0].endswith(".py")


def launch_argv(
    config: LauncherConfig,
    command: Sequence[str],
    *,
    job_name: str,
    node_rank: int,
    python: str,
) -> list[str]:
    """The argv of one attempt: `command` itself, or torchrun starting it on this node.

    `python` is the interpreter of the default launcher (the supervisor's own); a
    configured `launcher.torchrun` replaces `[python, -m, torch.distributed.run]`.
    """
    if config.kind == "direct":
        return list(command)
    argv = list(config.torchrun) if config.torchrun else [python, "-m", TORCHRUN_MODULE]
    argv += ["--nnodes", str(config.nnodes), "--nproc-per-node", str(config.nproc_per_node)]
    if config.rdzv_endpoint is None:
        # One node, no endpoint: torchrun picks a free local port (c10d on localhost), so
        # two jobs on one machine never collide.
        argv.append("--standalone")
    else:
        argv += [
            "--rdzv-backend",
            config.rdzv_backend,
            "--rdzv-endpoint",
            config.rdzv_endpoint,
            "--rdzv-id",
            config.rdzv_id or job_name,
        ]
    argv += ["--max-restarts", str(config.max_restarts), "--node-rank", str(node_rank)]
    argv += config.args
    if not runs_as_script(command):
        argv.append("--no-python")
    argv += command
    return argv
