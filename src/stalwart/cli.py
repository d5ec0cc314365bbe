"""The `stalwart` command line. The only place that configures logging or prints."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stalwart import __version__, config, paths
from stalwart.errors import StalwartError, UsageError
from stalwart.journal import Journal
from stalwart.types import signal_name

logger = logging.getLogger("stalwart")


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    # journald stamps every line itself; a terminal user wants the time.
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "stalwart %(levelname)s %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)


def _split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first `--`: supervisor options before, the training command after."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stalwart",
        description="Supervise a training job: relaunch it after crashes from its newest intact "
        "checkpoint.",
    )
    parser.add_argument("--version", action="version", version=f"stalwart {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    history = commands.add_parser("history", help="list a job's attempts from its journal")
    history.add_argument("name", nargs="?", default="default", help="job name")
    history.add_argument("--state-dir", type=Path, help="state directory of the job")
    history.add_argument("--all", action="store_true", help="every run, not just the latest")
    return parser


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "state_dir": str(args.state_dir) if args.state_dir else None,
        "checkpoint.dir": str(args.ckpt_dir) if args.ckpt_dir else None,
        "restart.max_restarts": args.max_restarts,
        "stop.grace_s": args.grace_s,
        "stop.signal": args.stop_signal,
        "output.prefix": False if args.no_prefix else None,
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


def _fmt_time(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def cmd_history(args: argparse.Namespace) -> int:
    state = paths.state_dir(args.name, args.state_dir, os.environ)
    journal_path = state / "journal.sqlite"
    if not journal_path.exists():
        raise UsageError(
            f"no journal for job {args.name!r} at {journal_path}; "
            "pass the job's --state-dir, or run it first"
        )
    with Journal(journal_path) as journal:
        runs = journal.runs(args.name) or journal.runs()
        if not args.all:
            runs = runs[-1:]
        for run in runs:
            sys.stdout.write(
                f"run {run.run_id} ({run.name}): {run.status}, "
                f"started {_fmt_time(run.started_unix)}\n  command: {' '.join(run.command)}\n"
            )
            rows = []
            for a in journal.attempts(run.run_id):
                if a.signal is not None:
                    ended = signal_name(a.signal)
                elif a.exit_code is not None:
                    ended = f"exit {a.exit_code}"
                else:
                    ended = "-" if a.ended_unix else "running"
                rows.append(
                    [
                        str(a.attempt),
                        _fmt_time(a.started_unix),
                        f"{a.uptime_s:.1f}" if a.uptime_s is not None else "-",
                        ended,
                        a.kind or "-",
                        (a.decision or a.reason or "-")[:80],
                    ]
                )
            sys.stdout.write(
                _table(["attempt", "started", "uptime_s", "ended", "kind", "decision"], rows)
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    before, command = _split_command(raw)
    parser = _parser()
    try:
        args = parser.parse_args(before)
    except SystemExit as exc:  # argparse's own usage errors exit 2 already
        return int(exc.code or 0)
    if command is not None and args.command != "run":
        parser.error("`-- CMD` is only valid with `stalwart run`")
    _setup_logging(args.verbose)
    try:
        if args.command == "run":
            return cmd_run(args, command)
        if args.command == "config":
            return cmd_config_check(args)
        return cmd_history(args)
    except StalwartError as exc:
        logger.error("%s", exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
