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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from stalwart.errors import ConfigError
from stalwart.policy.section import PositiveS, Section

ENV_NODE_RANK = "STALWART_NODE_RANK"
"""This node's rank: read when `launcher.node_rank` is unset, passed to the trainer always."""
ENV_NNODES = "STALWART_NNODES"
"""The number of nodes, passed to the trainer."""
TORCHRUN_MODULE = "torch.distributed.run"
"""What `torchrun` runs; started as `<python> -m torch.distributed.run` by default."""


LAUNCHER_FLAGS = frozenset(
    {
        "--nnodes",
        "--nproc-per-node",
        "--nproc_per_node",
        "--rdzv-backend",
        "--rdzv_backend",
        "--rdzv-endpoint",
        "--rdzv_endpoint",
        "--rdzv-id",
        "--rdzv_id",
        "--max-restarts",
        "--max_restarts",
        "--node-rank",
        "--node_rank",
        "--standalone",
        "--no-python",
        "--no_python",
        "--run-path",
        "--run_path",
        "-m",
        "--module",
    }
)
"""torchrun flags stalwart writes itself (from the launcher fields and the command)."""
TORCHRUN_FORWARDED_SIGNALS = frozenset({"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"})
"""Signals torchrun's agent forwards to its workers unless told otherwise."""
TORCHRUN_ONLY_FIELDS = (
    "nproc_per_node",
    "rdzv_endpoint",
    "rdzv_backend",
    "rdzv_id",
    "max_restarts",
    "torchrun",
    "args",
)
"""Launcher fields that mean nothing with kind: direct (nnodes and node_rank still set roles)."""
SIGNAL_FLAGS = frozenset({"--signals-to-handle", "--signals_to_handle"})
ENDPOINT_PATTERN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
"""`host:port`, the host a name, an IPv4 address or a bracketed IPv6 address."""


class LauncherConfig(Section):
    """How the trainer is started: the command as is, or under torchrun (one node's agent)."""

    kind: Literal["direct", "torchrun"] = "direct"
    """direct: run `command` as is; torchrun: run it as the workers of a torchrun agent,
    one stalwart per node restarting that node's agent. Under torchrun a `command` whose
    first element ends in `.py` runs with the launcher's Python; any other command runs as
    written in each worker (`--no-python`: `python train.py`, `python -m pkg`, `./run.sh`)."""
    nnodes: int = Field(default=1, ge=1)
    """Nodes in the job (one stalwart each); with more than one, only node 0 prunes and
    uploads the shared checkpoint directory."""
    nproc_per_node: int = Field(default=1, ge=1)
    """Worker processes torchrun starts on this node (usually one per GPU)."""
    rdzv_endpoint: str | None = None
    """`host:port` where the nodes meet (required with nnodes > 1); unset on one node:
    torchrun's `--standalone` picks a free local port."""
    rdzv_backend: str = Field(default="c10d", min_length=1)
    """torchrun's rendezvous backend."""
    rdzv_id: str | None = Field(default=None, min_length=1)
    """Rendezvous id shared by all nodes of the job; default the job `name`."""
    node_rank: int | None = Field(default=None, ge=0)
    """This node's rank (0 is the primary); default $STALWART_NODE_RANK, else 0 on one node."""
    max_restarts: int = Field(default=0, ge=0)
    """Worker restarts torchrun makes by itself before its agent fails; 0 leaves every
    restart to stalwart (which resumes from the newest verified checkpoint)."""
    torchrun: list[str] | None = Field(default=None, min_length=1)
    """The launcher command; default `[<stalwart's python>, -m, torch.distributed.run]`,
    resolved at launch: the torch of stalwart's own environment, with no dependence on
    PATH (systemd units get a minimal one)."""
    args: list[str] = []
    """Extra torchrun arguments (e.g. `--local-addr`, `--log-dir`), placed before the command."""
    peer_exit_s: PositiveS = 2.0
    """After a worker says it saved and left because another node drained the job
    (PEER_DRAIN=1), how long this node's launcher may take to exit before it is killed:
    torchrun's agent otherwise waits up to 300 s at its exit barrier for the node that left
    (deaf to SIGTERM meanwhile), keeping the rendezvous store it may host alive."""

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = ENDPOINT_PATTERN.match(value.strip())
        if match is None or not 1 <= int(match[2]) <= 65535:
            raise ValueError(
                "must be host:port with a port in 1-65535 (e.g. node0.cluster:29400 or "
                "[fd00::1]:29400)"
            )
        return value.strip()

    @field_validator("args")
    @classmethod
    def _no_managed_flags(cls, value: list[str]) -> list[str]:
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in LAUNCHER_FLAGS:
                raise ValueError(
                    f"{flag} is written by stalwart (from the launcher fields and `command`); "
                    "set the launcher field instead"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LauncherConfig:
        if self.kind == "direct":
            # Compared with the defaults, not with what was written: a dumped config spells
            # every default out and must load again.
            torchrun_only = sorted(
                name
                for name in TORCHRUN_ONLY_FIELDS
                if getattr(self, name) != type(self).model_fields[name].get_default()
            )
            if torchrun_only:
                raise ValueError(
                    f"{', '.join(torchrun_only)}: only used with kind: torchrun; "
                    "set kind: torchrun or remove them"
                )
        elif self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"nnodes is {self.nnodes}: set rdzv_endpoint to host:port of a machine all "
                "nodes reach (usually node 0)"
            )
        if self.node_rank is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes ({self.nnodes})")
        return self


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
