"""`stalwart report`: what an operator looks at first. A summary from the journal, and a
timeline picture of attempts, failures, checkpoints, interval decisions and lost work.

`summarize` is pure (journal records in, a summary out); `plot` needs matplotlib
(`pip install stalwart[plot]`), imported only when a picture is asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stalwart import paths
from stalwart.checkpoint.layout import QuarantineReason
from stalwart.errors import UsageError
from stalwart.journal import (
    AttemptRecord,
    CheckpointRecord,
    IntervalRecord,
    Journal,
    QuarantineRecord,
)
from stalwart.types import ExitKind

KIND_COLORS = {
    "COMPLETED": "#2ca02c",
    "STOPPED": "#7f7f7f",
    "PREEMPTED": "#9467bd",
    "OOM": "#d62728",
    "HANG": "#ff7f0e",
    "INFRA": "#8c564b",
    "USER_ERROR": "#e377c2",
    "CHECKPOINT_CORRUPT": "#bcbd22",
    "DIVERGED": "#17becf",
    "UNKNOWN": "#1f77b4",
}


@dataclass(frozen=True)
class LostWork:
    attempt: int
    from_unix: float
    to_unix: float

    @property
    def seconds(self) -> float:
        return max(self.to_unix - self.from_unix, 0.0)


@dataclass(frozen=True)
class Diverged:
    """An attempt killed because its loss diverged, and what followed."""

    attempt: int
    reason: str
    decision: str


@dataclass(frozen=True)
class ReportSummary:
    attempts: int
    failures_by_kind: dict[str, int]
    span_s: float
    """From the first launch to the last end (or now)."""
    uptime_s: float
    checkpoints: int
    checkpoint_stall_s: float
    lost: tuple[LostWork, ...]
    interval_s: float | None
    interval_reason: str | None
    diverged: tuple[Diverged, ...] = ()
    diverged_quarantined: tuple[str, ...] = ()
    """Checkpoints quarantined as `diverged` (written after a spike began)."""

    @property
    def uptime_fraction(self) -> float:
        return self.uptime_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def lost_s(self) -> float:
        return sum(item.seconds for item in self.lost)


def summarize(
    attempts: Sequence[AttemptRecord],
    checkpoints: Sequence[CheckpointRecord],
    decisions: Sequence[IntervalRecord],
    now_unix: float,
    quarantines: Sequence[QuarantineRecord] = (),
) -> ReportSummary:
    """Work lost per failure = run time after the attempt's last reported checkpoint."""
    failures = Counter(a.kind for a in attempts if a.kind and ExitKind(a.kind).is_failure)
    lost = []
    for attempt in attempts:
        if not attempt.kind or not ExitKind(attempt.kind).is_failure or attempt.ended_unix is None:
            continue
        saved = [
            c.reported_unix
            for c in checkpoints
            if c.run_id == attempt.run_id
            and c.attempt == attempt.attempt
            and c.reported_unix <= attempt.ended_unix
        ]
        lost.append(
            LostWork(attempt.attempt, max(saved, default=attempt.started_unix), attempt.ended_unix)
        )
    start = min((a.started_unix for a in attempts), default=now_unix)
    end = max((a.ended_unix or now_unix for a in attempts), default=now_unix)
    last = decisions[-1] if decisions else None
    return ReportSummary(
        attempts=len(attempts),
        failures_by_kind=dict(sorted(failures.items())),
        span_s=end - start,
        uptime_s=sum(
            (a.uptime_s if a.uptime_s is not None else now_unix - a.started_unix) for a in attempts
        ),
        checkpoints=len(checkpoints),
        checkpoint_stall_s=sum(c.stall_s or 0.0 for c in checkpoints),
        lost=tuple(lost),
        interval_s=last.interval_s if last else None,
        interval_reason=last.reason if last else None,
        diverged=tuple(
            Diverged(a.attempt, a.reason or "", a.decision or "")
            for a in attempts
            if a.kind == ExitKind.DIVERGED.value
        ),
        diverged_quarantined=tuple(
            q.name for q in quarantines if q.reason == QuarantineReason.DIVERGED.value
        ),
    )


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def render_text(name: str, summary: ReportSummary) -> str:
    failures = ", ".join(f"{k} {v}" for k, v in summary.failures_by_kind.items()) or "none"
    lines = [
        f"job {name}: {summary.attempts} attempt(s) over {_duration(summary.span_s)}",
        f"  running          {summary.uptime_fraction:.1%} of the time "
        f"({_duration(summary.uptime_s)})",
        f"  failures         {failures}",
        f"  work lost        {_duration(summary.lost_s)} "
        f"({len(summary.lost)} failure(s); run time after each one's last checkpoint)",
        f"  checkpointing    {summary.checkpoints} save(s), "
        f"{_duration(summary.checkpoint_stall_s)} of training blocked",
    ]
    if summary.interval_s is not None:
        lines.append(
            f"  interval         {_duration(summary.interval_s)} ({summary.interval_reason})"
        )
    if summary.diverged:
        quarantined = ", ".join(summary.diverged_quarantined) or "none"
        lines.append(
            f"  loss diverged    {len(summary.diverged)} time(s); quarantined as diverged: "
            f"{quarantined}"
        )
        lines += [f"    attempt {d.attempt}: {d.reason} -> {d.decision}" for d in summary.diverged]
    return "\n".join(lines) + "\n"


def plot(
    path: Path,
    name: str,
    *,
    attempts: Sequence[AttemptRecord],
    checkpoints: Sequence[CheckpointRecord],
    decisions: Sequence[IntervalRecord],
    summary: ReportSummary,
    now_unix: float,
) -> None:
    """Write the timeline PNG. Raises ImportError without matplotlib."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    start = min((a.started_unix for a in attempts), default=now_unix)
    span_s = max(summary.span_s, 1e-9)
    unit_s, unit = (
        (3600.0, "hours")
        if span_s >= 7200
        else (60.0, "minutes")
        if span_s >= 120
        else (1.0, "seconds")
    )

    def rel_h(unix: float) -> float:
        return (unix - start) / unit_s

    figure, (timeline, interval) = plt.subplots(
        2, 1, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    for attempt in attempts:
        end = attempt.ended_unix or now_unix
        color = KIND_COLORS.get(attempt.kind or "", "#c7c7c7")
        timeline.barh(
            0,
            rel_h(end) - rel_h(attempt.started_unix),
            left=rel_h(attempt.started_unix),
            height=0.5,
            color=color,
            edgecolor="black",
            linewidth=0.3,
        )
    for item in summary.lost:
        timeline.barh(
            -0.55,
            rel_h(item.to_unix) - rel_h(item.from_unix),
            left=rel_h(item.from_unix),
            height=0.3,
            color="#d62728",
            alpha=0.6,
        )
    ckpt_times = [rel_h(c.reported_unix) for c in checkpoints]
    timeline.scatter(ckpt_times, [0.45] * len(ckpt_times), marker="v", s=18, color="black")
    timeline.set_yticks([0.45, 0, -0.55], ["checkpoints", "attempts", "work lost"])
    timeline.set_ylim(-0.9, 0.8)
    handles = [
        Rectangle((0, 0), 1, 1, color=KIND_COLORS[kind])
        for kind in sorted({a.kind for a in attempts if a.kind in KIND_COLORS})
    ]
    labels = sorted({a.kind for a in attempts if a.kind in KIND_COLORS})
    if handles:
        timeline.legend(handles, labels, loc="upper left", fontsize=7, ncols=4)
    timeline.set_title(
        f"{name}: {summary.attempts} attempts, {summary.uptime_fraction:.0%} running, "
        f"{_duration(summary.lost_s)} lost, {summary.checkpoints} checkpoints"
    )
    if decisions:
        times = [rel_h(d.decided_unix) for d in decisions] + [rel_h(now_unix)]
        values = [d.interval_s / 60 for d in decisions]
        interval.step(times, [*values, values[-1]], where="post", color="#1f77b4")
    interval.set_ylabel("advised interval (min)")
    interval.set_xlabel(f"{unit} since the first launch")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="summary and timeline picture from the journal")
    report.add_argument("name", nargs="?", default="default", help="job name")
    report.add_argument("--state-dir", type=Path, help="state directory of the job")
    report.add_argument("--out", type=Path, help="write the timeline PNG here (needs matplotlib)")


def cmd_report(args: argparse.Namespace) -> int:
    state = paths.find_state_dir(args.name, args.state_dir, os.environ)
    journal_path = paths.job_journal(args.name, state)
    now_unix = time.time()
    with Journal(journal_path) as journal:
        attempts = journal.job_attempts(args.name) + [
            a for a in journal.attempts() if a.ended_unix is None
        ]
        checkpoints = journal.checkpoints(args.name)
        decisions = journal.interval_decisions(args.name)
        runs = {a.run_id for a in attempts}
        quarantines = [q for q in journal.quarantines() if q.run_id in runs]
    summary = summarize(attempts, checkpoints, decisions, now_unix, quarantines)
    sys.stdout.write(render_text(args.name, summary))
    if args.out is not None:
        try:
            plot(
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
