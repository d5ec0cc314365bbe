"""`stalwart run` and `stalwart config check`: a job under the supervisor, and its config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stalwart import config
from stalwart.errors import UsageError


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a training command under the supervisor",
        usage="stalwart run [CONFIG.yaml] [OPTIONS] [-- CMD ARGS...]",
        description="Run CONFIG.yaml's command, or CMD ARGS after `--`, under the supervisor.",
    )
    run.add_argument("config", nargs="?", type=Path, help="job config (YAML)")
    run.add_argument("--name", help="job name (state dir, lock, journal); default 'default'")
    run.add_argument("--state-dir", type=Path, help="journal and lock directory")
    run.add_argument("--ckpt-dir", type=Path, help="checkpoint directory (STALWART_CKPT_DIR)")
    run.add_argument("--max-restarts", type=int, help="relaunches allowed within the window")
    run.add_argument("--grace-s", type=float, help="seconds between stop signal and SIGKILL")
    run.add_argument("--stop-signal", help="signal asking the trainer to stop (default SIGTERM)")
    run.add_argument("--no-prefix", action="store_true", help="pass trainer output unprefixed")
    run.add_argument(
        "--chaos",
        action="store_true",
        help="rehearse recovery: kill the trainer at random moments (tune with --set chaos.*)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override any config key, e.g. --set restart.backoff_initial_s=0 (repeatable)",
    )

    cfg = commands.add_parser("config", help="inspect configs")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_commands.add_parser("check", help="validate a config and print the effective one")
    check.add_argument("file", type=Path)


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "state_dir": str(args.state_dir) if args.state_dir else None,
        "checkpoint.dir": str(args.ckpt_dir) if args.ckpt_dir else None,
        "restart.max_restarts": args.max_restarts,
        "stop.grace_s": args.grace_s,
        "stop.signal": args.stop_signal,
        "output.prefix": False if args.no_prefix else None,
        "chaos.enabled": True if args.chaos else None,
    }


def cmd_run(args: argparse.Namespace, command: list[str] | None) -> int:
    from stalwart.supervisor import Supervisor

    if args.config is None and not command:
        raise UsageError("give a config file or a command after `--`; see `stalwart run -h`")
    job = config.load(args.config, command=command, overrides=args.set, base=_run_options(args))
    return Supervisor(job).run()


def cmd_config_check(args: argparse.Namespace) -> int:
    job = config.load(args.file)
    sys.stdout.write(f"# {args.file}: valid\n")
    sys.stdout.write(config.dump(job))
    return 0
