"""The job config: a pydantic schema at the boundary, loaded from YAML or built from options.

Every field documents itself and carries its unit in its name. Unknown keys are
errors (`extra="forbid"`), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import shlex
import signal as signals
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stalwart.errors import ConfigError
from stalwart.policy.interval import IntervalConfig
from stalwart.preemption.config import PreemptionConfig
from stalwart.remote.config import RemoteConfig
from stalwart.types import ExitKind

MAX_CONFIG_BYTES = 1024 * 1024
"""A config is a few KiB; anything larger is a mistake (or hostile) and is refused unread."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"

NonNegativeS = Annotated[float, Field(ge=0)]
PositiveS = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RestartConfig(_Section):
    """When and how fast a failed trainer is relaunched."""

    max_restarts: int = Field(default=10, ge=0)
    """Relaunches allowed within `window_s`; one more failure gives up (exit 3)."""
    window_s: PositiveS = 3600.0
    """Sliding window over which failures spend the restart budget."""
    backoff_initial_s: NonNegativeS = 1.0
    """Backoff ceiling after the first consecutive failure."""
    backoff_max_s: NonNegativeS = 300.0
    """Cap on the backoff ceiling."""
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    """Growth of the backoff ceiling per consecutive failure."""
    jitter: Literal["full", "equal", "none"] = "full"
    """full: uniform in [0, ceiling]; equal: [ceiling/2, ceiling]; none: the ceiling."""
    healthy_uptime_s: NonNegativeS = 600.0
    """An attempt that ran this long resets the backoff to its initial value."""
    started_after_s: NonNegativeS = 5.0
    """An attempt alive this long counts as started (STARTING -> RUNNING)."""
    poison_after_failures: int = Field(default=3, ge=1)
    """Failures in a row after resuming from the same checkpoint, with no newer checkpoint
    written, that mark it as poison: it is quarantined and the previous one is used."""
    max_rollbacks: int = Field(default=2, ge=0)
    """Poison rollbacks allowed per run; one more poison checkpoint gives up (exit 3)."""

    @model_validator(mode="after")
    def _cap_covers_initial(self) -> RestartConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )
        return self


class StopConfig(_Section):
    """How a trainer is asked to stop."""

    signal: str = "SIGTERM"
    """Signal sent to the trainer's whole process group to ask it to save and exit."""
    grace_s: NonNegativeS = 30.0
    """Time the trainer gets after the stop signal before SIGKILL."""
    kill_wait_s: PositiveS = 5.0
    """Time allowed for the kernel to reap the group after SIGKILL before giving up on it."""

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in signals.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"unknown or uncatchable signal {value!r}; use e.g. SIGTERM or SIGINT")
        return name

    @property
    def signum(self) -> signals.Signals:
        return signals.Signals[self.signal]


class OutputConfig(_Section):
    """What happens to the trainer's stdout and stderr."""

    prefix: bool = True
    """Prefix each line with `[name#attempt]`; off passes bytes through unchanged."""
    tail_lines: int = Field(default=50, ge=1, le=10_000)
    """Last lines of output kept to classify a failure."""


class PatternRule(_Section):
    """A line pattern that decides the kind of a failure."""

    regex: str
    """Python regular expression searched in each of the last output lines."""
    kind: ExitKind
    """Kind assigned when it matches."""
    retryable: bool = True
    """Whether that failure may be retried."""

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class ClassifyConfig(_Section):
    """How an attempt's end is classified (on top of the built-in rules)."""

    non_retryable_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = []
    """Exit codes that mean the job cannot succeed by retrying (exit 3 at once)."""
    patterns: list[PatternRule] = []
    """Rules tried before the built-in ones, newest output line first."""


class CheckpointConfig(_Section):
    """Where the trainer writes checkpoints."""

    dir: Path | None = None
    """Checkpoint directory (STALWART_CKPT_DIR); default `<state_dir>/checkpoints`."""
    keep_last: int = Field(default=3, ge=1)
    """Verified checkpoints kept (the newest verified one is never deleted)."""
    keep_every_steps: int | None = Field(default=None, gt=0)
    """Also keep every checkpoint whose step is a multiple of this (milestones)."""
    pinned: list[str] = []
    """Checkpoint names never pruned."""
    min_free_bytes: int = Field(default=0, ge=0)
    """Prune oldest eligible checkpoints (and warn) when free space falls below this."""
    foreign_globs: list[str] = []
    """Top-level names of checkpoints written without stalwart (e.g. 'checkpoint-*', '*.ckpt')."""
    adopt_foreign: bool = True
    """Write a manifest beside a stable, format-valid foreign checkpoint, so it verifies fully."""
    observe: bool = True
    """Watch the directory (watchdog) to measure save cost of trainers that do not report it."""
    quiescence_s: PositiveS = 2.0
    """A foreign write is finished after this long without file events."""
    remote: RemoteConfig = RemoteConfig()
    """A durable copy in object storage (spot instances): `url` enables it."""
    interval: IntervalConfig = IntervalConfig()
    """How often the trainer is advised to save: adaptive (Young/Daly) or fixed."""
    recompute_every_s: PositiveS = 60.0
    """The advice is recomputed on each measurement and at least this often."""
    keep_best: int = Field(default=0, ge=0)
    """Also keep this many verified checkpoints with the best `best_metric` (0: off)."""
    best_metric: str | None = None
    """Metric recorded in the manifests' meta that ranks checkpoints (e.g. 'val_loss')."""
    best_mode: Literal["min", "max"] = "min"
    """min: lower `best_metric` is better (a loss); max: higher is better (an accuracy)."""

    @model_validator(mode="after")
    def _best_needs_metric(self) -> CheckpointConfig:
        if self.keep_best and not self.best_metric:
            raise ValueError("keep_best needs best_metric (the metric that ranks checkpoints)")
        return self


class HangConfig(_Section):
    """When a trainer that heartbeats is called hung (it is then killed and relaunched)."""

    enabled: bool = True
    """Off: heartbeats are tracked for status but never lead to a kill."""
    factor: float = Field(default=10.0, ge=1.0)
    """Silence allowed, as a multiple of the slow tail of observed heartbeat gaps."""
    tail_quantile: float = Field(default=0.99, gt=0, le=1)
    """Which quantile of the heartbeat gaps is the slow tail."""
    floor_s: PositiveS = 120.0
    """Never call a hang sooner than this."""
    first_step_s: PositiveS = 1800.0
    """Allowance until `warmup_heartbeats` gaps are seen (start, restore, compilation)."""
    warmup_heartbeats: int = Field(default=5, ge=1)
    """Heartbeat gaps observed before the learned threshold applies."""
    checkpoint_s: PositiveS = 3600.0
    """Allowance while a checkpoint is being written (CKPT_BEGIN without a report)."""
    window_heartbeats: int = Field(default=2000, ge=10)
    """Recent heartbeat gaps kept to learn the slow tail."""
    dump_wait_s: NonNegativeS = 3.0
    """Time given to dump Python stacks (SIGUSR2 / py-spy) before the kill."""


class MonitorConfig(_Section):
    """Resource sampling of the trainer's process tree."""

    sample_interval_s: PositiveS = 5.0
    """How often RSS, CPU, disk and GPU are sampled."""
    memory_limit_fraction: float = Field(default=0.95, gt=0, le=1)
    """RSS at this fraction of the memory limit counts as 'at the limit' (OOM evidence)."""
    notify_batch_s: NonNegativeS = 0.25
    """After reading heartbeats, wait this long before the next read (kernel timestamps keep
    their times exact); bounds the supervisor's CPU when a trainer heartbeats very often."""


class ChaosConfig(_Section):
    """Fault injection, to rehearse recovery on your own job (`stalwart run --chaos`)."""

    enabled: bool = False
    """Kill the trainer at random moments."""
    kill_after_min_s: NonNegativeS = 5.0
    """Earliest moment of a kill, in seconds after the attempt started."""
    kill_after_max_s: NonNegativeS = 60.0
    """Latest moment of a kill; each attempt draws uniformly in between."""
    max_kills: int = Field(default=10, ge=0)
    """Injected kills per supervisor run; after that the job runs undisturbed."""
    signal: str = "SIGKILL"
    """Signal sent to the trainer's process group."""
    seed: int | None = None
    """Random seed, for a reproducible rehearsal."""

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if name not in signals.Signals.__members__:
            raise ValueError(f"unknown signal {value!r}")
        return name

    @model_validator(mode="after")
    def _ordered(self) -> ChaosConfig:
        if self.kill_after_max_s < self.kill_after_min_s:
            raise ValueError("kill_after_max_s must be >= kill_after_min_s")
        return self


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


class LauncherConfig(_Section):
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
    peer_exit_s: PositiveS = 10.0
    """After a worker says it saved and left because another node drained the job
    (PEER_DRAIN=1), how long this node's launcher may take to exit before it is stopped:
    torchrun's agent otherwise waits up to 300 s at its exit barrier for the node that left."""

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


class JobConfig(_Section):
    """One supervised training job."""

    name: str = "default"
    """Job name: keys the state directory, the lock and the journal."""
    command: list[str] = Field(min_length=1)
    """The training command, as a list or a shell-like string (no shell is run)."""
    cwd: Path | None = None
    """Working directory of the trainer; default the supervisor's."""
    env: dict[str, str] = {}
    """Extra environment variables for the trainer."""
    state_dir: Path | None = None
    """Journal, run id and lock; default $STATE_DIRECTORY or ./.stalwart/<name>."""
    restart: RestartConfig = RestartConfig()
    stop: StopConfig = StopConfig()
    output: OutputConfig = OutputConfig()
    classify: ClassifyConfig = ClassifyConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    hang: HangConfig = HangConfig()
    monitor: MonitorConfig = MonitorConfig()
    preemption: PreemptionConfig = PreemptionConfig()
    chaos: ChaosConfig = ChaosConfig()
    launcher: LauncherConfig = LauncherConfig()
    """How `command` is started: as is, or as the workers of a torchrun agent."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not re.match(NAME_PATTERN, value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '_', '.', '@', '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return shlex.split(value)
        return value

    @field_validator("command")
    @classmethod
    def _nonempty_program(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the program (first element) is empty")
        return value

    @model_validator(mode="after")
    def _launcher_fits(self) -> JobConfig:
        launcher = self.launcher
        if launcher.nnodes > 1 and self.checkpoint.dir is None:
            raise ValueError(
                f"launcher.nnodes is {launcher.nnodes}: set checkpoint.dir to a directory "
                "every node shares (the default is inside this node's state directory)"
            )
        if (
            launcher.kind == "torchrun"
            and self.stop.signal not in TORCHRUN_FORWARDED_SIGNALS
            and not any(a.split("=", 1)[0] in SIGNAL_FLAGS for a in launcher.args)
        ):
            raise ValueError(
                f"stop.signal {self.stop.signal} is not forwarded by torchrun to its workers "
                f"(it forwards {', '.join(sorted(TORCHRUN_FORWARDED_SIGNALS))}); use one of "
                "those, or add --signals-to-handle to launcher.args"
            )
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys allowed at the parent of `loc`, for 'unknown key' messages."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _describe(error: Any) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(JobConfig, loc)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message} (got {error.get('input')!r})"


def validate(data: Any, source: str) -> JobConfig:
    """Validate raw data into a JobConfig, or raise ConfigError naming every problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"top level must be a mapping of keys, got {type(data).__name__}"]
        )
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with a size cap; errors name the file and the line."""
    source = str(path)
    try:
        size_bytes = path.stat().st_size
        if size_bytes > MAX_CONFIG_BYTES:
            raise ConfigError(
                source,
                [f"file is {size_bytes} bytes; a config may be at most {MAX_CONFIG_BYTES} bytes"],
            )
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"file exceeds {MAX_CONFIG_BYTES} bytes"])
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"top level must be a mapping of keys, got {type(data).__name__}"]
        )
    return data


def _set_path(data: dict[str, Any], key_path: str, value: Any) -> None:
    node = data
    parts = key_path.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("--set", [f"{key_path}: {part} is not a section"])
        node = child
    node[parts[-1]] = value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML) to raw config data."""
    key_path, sep, raw_value = assignment.partition("=")
    if not sep or not key_path.strip():
        raise ConfigError("--set", [f"{assignment!r}: expected KEY.PATH=VALUE"])
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else raw_value
    except yaml.YAMLError as exc:
        raise ConfigError("--set", [f"{key_path}: value is not valid YAML: {exc}"]) from None
    _set_path(data, key_path, value)


def load(
    path: Path | None,
    *,
    command: list[str] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> JobConfig:
    """The effective config: file (if any), then `base` options, then `--set`s, then command."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "command line"
    for key, value in (base or {}).items():
        if value is not None:
            _set_path(data, key, value)
    for assignment in overrides or []:
        apply_override(data, assignment)
    if command:
        data["command"] = list(command)
    if "command" not in data:
        raise ConfigError(
            source,
            [
                "command: required key is missing; "
                "give it in the file or after `--` on the command line"
            ],
        )
    return validate(data, source)


def dump(config: JobConfig) -> str:
    """The effective config as YAML, every default spelled out."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
