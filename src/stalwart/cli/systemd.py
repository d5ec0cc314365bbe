"""`stalwart systemd install NAME CONFIG`: put a validated config and the unit in place."""

from __future__ import annotations

import argparse
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


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    systemd = commands.add_parser("systemd", help="run jobs as systemd services")
    systemd_commands = systemd.add_subparsers(
        dest="systemd_command", required=True, metavar="ACTION"
    )
    install = systemd_commands.add_parser(
        "install", help="validate CONFIG, install it as /etc/stalwart/NAME.yaml, install the unit"
    )
    install.add_argument("name")
    install.add_argument("config", type=Path)
    install.add_argument("--dry-run", action="store_true", help="print what would be written")
    install.add_argument("--root", type=Path, default=Path("/"), help="install under this root")
    install.add_argument("--executable", help="path of `stalwart` for ExecStart")


def cmd_systemd_install(args: argparse.Namespace) -> int:
    executable = args.executable or stalwart_executable()
    actions = plan(args.name, args.config, args.root, executable)
    for action in actions:
        verb = "would write" if args.dry_run else "writing"
        sys.stdout.write(f"{verb} {action.target} (mode {action.mode:o}): {action.what}\n")
    if args.dry_run:
        return 0
    apply(actions)
    sys.stdout.write(next_steps(args.name))
    return 0
