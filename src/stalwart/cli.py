"""The `stalwart` command line. The only place that configures logging or prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stalwart import __version__, ckpt_cli, config, control, install, paths, status_view
from stalwart.errors import StalwartError, UsageError
from stalwart.journal import Journal
from stalwart.status_view import fmt_time, table
from stalwart.types import signal_name

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

    history = commands.add_parser("history", help="list a job's attempts from its journal")
    history.add_argument("name", nargs="?", default="default", help="job name")
    history.add_argument("--state-dir", type=Path, help="state directory of the job")
    history.add_argument("--all", action="store_true", help="every run, not just the latest")

    for command, text in (
        ("status", "what the job is doing (from its supervisor, or its journal if stopped)"),
        ("stop", "drain the job: checkpoint if the trainer can, stop, exit 0"),
        ("checkpoint", "ask the trainer for a checkpoint at its next step"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name", nargs="?", default="default", help="job name")
        sub.add_argument("--state-dir", type=Path, help="state directory of the job")
        sub.add_argument("--json", action="store_true", help="machine-readable output")

    ckpt_cli.add_parser(commands)

    report = commands.add_parser("report", help="summary and timeline picture from the journal")
    report.add_argument("name", nargs="?", default="default", help="job name")
    report.add_argument("--state-dir", type=Path, help="state directory of the job")
    report.add_argument("--out", type=Path, help="write the timeline PNG here (needs matplotlib)")

    commands.add_parser(
        "simulate",
        help="compare checkpoint strategies on simulated failures (see `stalwart simulate -h`)",
        add_help=False,
    )

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


def _job_journal(name: str, state: Path) -> Path:
    """The journal of an existing job, or a UsageError that says where it was looked for."""
    journal_path = state / paths.JOURNAL_NAME
    if not journal_path.exists():
        raise UsageError(
            f"no journal for job {name!r} at {journal_path}; "
            "pass the job's --state-dir, or run it first"
        )
    return journal_path


def cmd_history(args: argparse.Namespace) -> int:
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    journal_path = _job_journal(args.name, state)
    with Journal(journal_path) as journal:
        runs = journal.runs(args.name) or journal.runs()
        if not args.all:
            runs = runs[-1:]
        for run in runs:
            sys.stdout.write(
                f"run {run.run_id} ({run.name}): {run.status}, "
                f"started {fmt_time(run.started_unix)}\n  command: {' '.join(run.command)}\n"
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
                        fmt_time(a.started_unix),
                        f"{a.uptime_s:.1f}" if a.uptime_s is not None else "-",
                        ended,
                        a.kind or "-",
                        (a.decision or a.reason or "-")[:80],
                    ]
                )
            sys.stdout.write(
                table(["attempt", "started", "uptime_s", "ended", "kind", "decision"], rows)
            )
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    """status / stop / checkpoint: ask the running supervisor; fall back to the journal."""
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    runtime = paths.recorded_runtime_dir(state)
    snapshot: dict[str, Any] | None = None
    if runtime is not None and (runtime / "control.sock").exists():
        try:
            snapshot = control.request(runtime / "control.sock", args.command)
        except (OSError, ValueError) as exc:
            logger.debug("control socket unavailable: %s", exc)
    if snapshot is None:
        journal_path = _job_journal(args.name, state)
        if args.command != "status":
            raise UsageError(f"job {args.name!r} is not running; nothing to {args.command}")
        snapshot = status_view.from_journal(journal_path, args.name)
    if not snapshot.get("ok", False):
        raise UsageError(f"supervisor refused: {snapshot.get('error')}")
    if args.json:
        sys.stdout.write(json.dumps(snapshot, indent=2, default=str) + "\n")
    else:
        if args.command == "stop":
            sys.stdout.write(f"{args.name}: stop requested; the trainer is draining\n")
        elif args.command == "checkpoint":
            sys.stdout.write(f"{args.name}: checkpoint requested\n")
        sys.stdout.write(status_view.render(snapshot))
    return 0


def cmd_systemd_install(args: argparse.Namespace) -> int:
    executable = args.executable or install.stalwart_executable()
    actions = install.plan(args.name, args.config, args.root, executable)
    for action in actions:
        verb = "would write" if args.dry_run else "writing"
        sys.stdout.write(f"{verb} {action.target} (mode {action.mode:o}): {action.what}\n")
    if args.dry_run:
        return 0
    install.apply(actions)
    sys.stdout.write(install.next_steps(args.name))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from stalwart import report

    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    journal_path = _job_journal(args.name, state)
    now_unix = time.time()
    with Journal(journal_path) as journal:
        attempts = journal.job_attempts(args.name) + [
            a for a in journal.attempts() if a.ended_unix is None
        ]
        checkpoints = journal.checkpoints(args.name)
        decisions = journal.interval_decisions(args.name)
    summary = report.summarize(attempts, checkpoints, decisions, now_unix)
    sys.stdout.write(report.render_text(args.name, summary))
    if args.out is not None:
        try:
            report.plot(
                args.out,
                args.name,
                attempts=attempts,
                checkpoints=checkpoints,
                decisions=decisions,
                summary=summary,
                now_unix=now_unix,
            )
        except ImportError:
            raise UsageError(
                "the timeline picture needs matplotlib: pip install 'stalwart[plot]'"
            ) from None
        sys.stdout.write(f"timeline: {args.out}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["simulate"]:
        from stalwart import simulate

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
            return cmd_run(args, command)
        if args.command == "config":
            return cmd_config_check(args)
        if args.command in ("status", "stop", "checkpoint"):
            return cmd_control(args)
        if args.command == "systemd":
            return cmd_systemd_install(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "checkpoints":
            return ckpt_cli.run(args)
        return cmd_history(args)
    except StalwartError as exc:
        logger.error("%s", exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
