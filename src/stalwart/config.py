"""The job config: a pydantic schema at the boundary, loaded from YAML or built from options.

Every field documents itself and carries its unit in its name. Unknown keys are
errors (`extra="forbid"`), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import shlex
import signal as signals
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from stalwart.checkpoint.config import CheckpointConfig
from stalwart.errors import ConfigError
from stalwart.metrics.config import MetricsConfig
from stalwart.notify.config import NotifyConfig
from stalwart.policy.classify import ClassifyConfig
from stalwart.policy.divergence import DivergenceConfig
from stalwart.policy.hang import HangConfig
from stalwart.policy.launcher import SIGNAL_FLAGS, TORCHRUN_FORWARDED_SIGNALS, LauncherConfig
from stalwart.policy.restart import RestartConfig
from stalwart.policy.section import NonNegativeS, PositiveS, Section
from stalwart.policy.stop import StopConfig
from stalwart.preemption.config import PreemptionConfig

MAX_CONFIG_BYTES = 1024 * 1024
"""A config is a few KiB; anything larger is a mistake (or hostile) and is refused unread."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class OutputConfig(Section):
    """What happens to the trainer's stdout and stderr."""

    prefix: bool = True
    """Prefix each line with `[name#attempt]`; off passes bytes through unchanged."""
    tail_lines: int = Field(default=50, ge=1, le=10_000)
    """Last lines of output kept to classify a failure."""


class MonitorConfig(Section):
    """Resource sampling of the trainer's process tree."""

    sample_interval_s: PositiveS = 5.0
    """How often RSS, CPU, disk and GPU are sampled."""
    memory_limit_fraction: float = Field(default=0.95, gt=0, le=1)
    """RSS at this fraction of the memory limit counts as 'at the limit' (OOM evidence)."""
    notify_batch_s: NonNegativeS = 0.25
    """After reading heartbeats, wait this long before the next read (kernel timestamps keep
    their times exact); bounds the supervisor's CPU when a trainer heartbeats very often."""


class ChaosConfig(Section):
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


class JobConfig(Section):
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
    divergence: DivergenceConfig = DivergenceConfig()
    """Loss spikes and NaN (from the trainer's `LOSS=` reports): roll back, skip ahead."""
    monitor: MonitorConfig = MonitorConfig()
    preemption: PreemptionConfig = PreemptionConfig()
    chaos: ChaosConfig = ChaosConfig()
    launcher: LauncherConfig = LauncherConfig()
    """How `command` is started: as is, or as the workers of a torchrun agent."""
    notify: NotifyConfig = NotifyConfig()
    """Notifications through apprise (Slack, Discord, Teams, email, ntfy, webhooks)."""
    metrics: MetricsConfig = MetricsConfig()
    """Prometheus metrics: an endpoint to scrape, a textfile for node_exporter."""

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
