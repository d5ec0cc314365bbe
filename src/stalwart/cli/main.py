"""The `stalwart` command line: the parser, logging, and dispatch to one module per subcommand.

The only place that configures logging or prints (with the subcommand modules it calls).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from stalwart import __version__
from stalwart.cli import checkpoints, control, history, notify, report, run, systemd
from stalwart.errors import StalwartError

logger = logging.getLogger("stalwart")


SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """Under systemd: `<N>` priority prefixes and no timestamps (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(verbosity: int, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s stalwart %(levelname)s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)


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
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log line format"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parsers(commands)
    history.add_parser(commands)
    control.add_parsers(commands)
    checkpoints.add_parser(commands)
    report.add_parser(commands)
    notify.add_parser(commands)
    commands.add_parser(
        "simulate",
        help="compare checkpoint strategies on simulated failures (see `stalwart simulate -h`)",
        add_help=False,
    )
    systemd.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["simulate"]:
        from stalwart.cli import simulate

        return simulate.main(raw[1:])
    before, command = _split_command(raw)
    parser = _parser()
    try:
        args = parser.parse_args(before)
    except SystemExit as exc:  # argparse's own usage errors exit 2 already
        return int(exc.code or 0)
    if command is not None and args.command != "run":
        parser.error("`-- CMD` is only valid with `stalwart run`")
    _setup_logging(args.verbose, args.log_format)
    try:
        if args.command == "run":
            return run.cmd_run(args, command)
        if args.command == "config":
            return run.cmd_config_check(args)
        if args.command in ("status", "stop", "checkpoint"):
            return control.cmd_control(args)
        if args.command == "systemd":
            return systemd.cmd_systemd_install(args)
        if args.command == "report":
            return report.cmd_report(args)
        if args.command == "checkpoints":
            return checkpoints.run(args)
        if args.command == "notify":
            return notify.cmd_notify(args)
        return history.cmd_history(args)
    except StalwartError as exc:
        logger.error("%s", exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
