"""The job's metrics in process: names and units, the listener, the atomic textfile."""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart.clock import FakeClock
from stalwart.metrics.config import MetricsConfig
from stalwart.metrics.exporter import Exporter
from stalwart.metrics.registry import JobMetrics
from stalwart.observation import (
    AttemptEnded,
    AttemptStarted,
    CheckpointSaved,
    IntervalAdvised,
    JobEnded,
    JobInfo,
)
from stalwart.types import ExitCode, ExitKind

JOB = JobInfo("mj", "host", "run", Path("/s"), Path("/c"), 10)


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels other than stalwart_job spelled out."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "stalwart_job"
            )
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def ended(kind: ExitKind, lost_s: float = 2.0, rolled_back: str | None = None) -> AttemptEnded:
    return AttemptEnded(
        1, kind, True, "r", "exit code 1", 5.0, (), "", "restart", "", 0.0, False, rolled_back,
        7, lost_s, None, 100.0,
    )  # fmt: skip


def test_the_names_units_and_values_follow_the_events() -> None:
    clock = FakeClock()
    wall = [1000.0]
    metrics = JobMetrics("mj", monotonic=clock.monotonic, wall=lambda: wall[0])
    metrics.job_started(JOB)
    metrics.state_changed("RUNNING")
    metrics.attempt_started(AttemptStarted(0, "/c/step-000000005", 5, 990.0, 1000.0))
    metrics.heartbeat(12, clock.monotonic())
    clock.advance(1.5)
    metrics.checkpoint_saved(CheckpointSaved(20, "/c/x", 4096, 0.2, 1.5, "trainer", 1000.0))
    metrics.interval_advised(IntervalAdvised(300.0, 0.2, 1.5, 30.0, 7200.0, "why"))
    metrics.attempt_ended(ended(ExitKind.OOM, rolled_back="step-000000005"))
    wall[0] = 1010.0
    from prometheus_client import generate_latest

    found = samples(generate_latest(metrics.registry).decode())
    assert found["stalwart_up"] == 1
    assert found["stalwart_state{stalwart_state=RUNNING}"] == 1
    assert found["stalwart_attempts_total"] == 1
    assert found["stalwart_failures_total{kind=OOM}"] == 1
    assert found["stalwart_rollbacks_total"] == 1
    assert found["stalwart_restart_budget_remaining"] == 7
    assert math.isnan(found["stalwart_heartbeat_age_seconds"])  # no trainer now
    assert found["stalwart_last_step"] == 12
    assert found["stalwart_checkpoint_step"] == 20
    assert found["stalwart_checkpoint_age_seconds"] == 10.0
    assert found["stalwart_checkpoint_size_bytes"] == 4096
    assert found["stalwart_checkpoint_stall_seconds_count"] == 1
    assert found["stalwart_checkpoint_persist_seconds_sum"] == 1.5
    assert found["stalwart_checkpoint_interval_seconds"] == 300
    assert found["stalwart_checkpoint_cost_seconds"] == 0.2
    assert found["stalwart_mtbf_seconds"] == 7200
    assert found["stalwart_work_lost_seconds_total"] == 2.0
    metrics.job_ended(JobEnded(ExitCode.OK, "", None, 0.0))
    assert samples(generate_latest(metrics.registry).decode())["stalwart_up"] == 0


def test_the_listener_serves_and_the_textfile_is_never_half_written(tmp_path: Path) -> None:
    """A reader parses the textfile while the writer rewrites it as fast as it can: each
    read is a whole file, because each version is a new file put in place by rename(2)."""
    metrics = JobMetrics("mj")
    for step in range(200):  # a long file: many series
        metrics.checkpoint_saved(CheckpointSaved(step, None, None, step / 100, step / 50, "t", 0))
    path = tmp_path / "mj.prom"
    config = MetricsConfig(listen="127.0.0.1:0", textfile=path, textfile_every_s=0.001)
    exporter = Exporter(config, metrics.registry, "mj")
    torn: list[str] = []
    inodes: set[int] = set()
    reads = 0
    try:
        assert exporter.address is not None
        host, port = exporter.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
            scraped = samples(reply.read().decode())
        assert scraped["stalwart_checkpoint_stall_seconds_count"] == 200
        while reads < 100:
            inodes.add(path.stat().st_ino)
            text = path.read_text()
            reads += 1
            if not text.endswith("\n") or "stalwart_work_lost_seconds_total" not in text:
                torn.append(text[-80:])
            samples(text)  # parses
    finally:
        exporter.close()
    assert not torn
    # Each rewrite is a new file renamed over the old one (an in-place rewrite keeps the inode,
    # and a reader could see it truncated or half written).
    assert len(inodes) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["mj.prom"]  # no temporary file left


def test_the_core_loads_neither_apprise_nor_prometheus_client() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, stalwart.config, stalwart.supervisor\n"
        "stalwart.config.validate({'command': ['true']}, 'x')\n"
        "print([m for m in ('apprise', 'prometheus_client') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "setting", "hint"),
    [
        ("apprise", "notify.urls=['json://127.0.0.1:1/x']", "stalwart[notify]"),
        ("prometheus_client", "metrics.listen=127.0.0.1:0", "stalwart[metrics]"),
    ],
)
def test_configured_but_not_installed_is_exit_2_with_the_extra_to_install(
    tmp_path: Path, module: str, setting: str, hint: str
) -> None:
    import subprocess
    import sys

    probe = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from stalwart.cli.main import main\n"
        f"sys.exit(main(['run', '--state-dir', {str(tmp_path / 's')!r}, '--set', {setting!r},"
        " '--', 'true']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2, out.stderr
    assert hint in out.stderr


def test_the_example_dashboard_uses_only_metrics_that_exist() -> None:
    import json
    import re

    from prometheus_client import generate_latest

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bstalwart_[a-z_]+(?=[{\[(\s]|$)", e)}
    metrics = JobMetrics("mj")
    metrics.add_notification_counts(lambda: {("gave_up", "sent"): 1})
    metrics.attempt_ended(ended(ExitKind.OOM))  # a labelled counter shows once it has one
    exported = set(samples(generate_latest(metrics.registry).decode()))
    names = {key.split("{")[0] for key in exported}
    assert used - names == set(), used - names
