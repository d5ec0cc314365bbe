"""`stalwart systemd install NAME CONFIG`: put a validated config and the unit in place."""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from stalwart import config
from stalwart.errors import UsageError

logger = logging.getLogger(__name__)

UNIT_NAME = "stalwart@.service"


@dataclass(frozen=True)
class Action:
    """One file the installer writes."""

    target: Path
    content: str
    mode: int
    what: str


def unit_text(executable: str) -> str:
    """The bundled unit, with ExecStart pointing at this installation's `stalwart`."""
    text = (importlib.resources.files("stalwart") / "data" / UNIT_NAME).read_text()
    return text.replace("/usr/local/bin/stalwart", executable)


def stalwart_executable() -> str:
    found = shutil.which("stalwart")
    if found:
        return os.path.abspath(found)
    candidate = Path(sys.executable).parent / "stalwart"
    if candidate.exists():
        return str(candidate)
    raise UsageError("cannot find the `stalwart` executable to put in ExecStart; pass --executable")


def plan(name: str, config_path: Path, root: Path, executable: str) -> list[Action]:
    """What installing would write; validates the config first (ConfigError -> exit 2)."""
    config.load(config_path)
    if not re.match(config.NAME_PATTERN, name):
        raise UsageError(f"invalid job name {name!r}: use letters, digits, '_', '.', '-'")
    return [
        Action(
            root / "etc" / "stalwart" / f"{name}.yaml",
            config_path.read_text(encoding="utf-8"),
            0o640,
            f"job config (validated from {config_path})",
        ),
        Action(
            root / "etc" / "systemd" / "system" / UNIT_NAME,
            unit_text(executable),
            0o644,
            f"template unit (ExecStart={executable})",
        ),
    ]


def apply(actions: list[Action]) -> None:
    for action in actions:
        action.target.parent.mkdir(parents=True, exist_ok=True)
        tmp = action.target.with_name(f".{action.target.name}.tmp")
        tmp.write_text(action.content, encoding="utf-8")
        os.chmod(tmp, action.mode)
        os.replace(tmp, action.target)


def next_steps(name: str) -> str:
    return (
        f"next:\n"
        f"  systemctl daemon-reload\n"
        f"  systemctl enable --now stalwart@{name}\n"
        f"  stalwart status {name}\n"
        f"  journalctl -u stalwart@{name} -f\n"
    )
