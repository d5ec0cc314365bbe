"""A scrape during a supervised run: the metrics move as the job checkpoints and is killed."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.supervised import environment, stalwart_argv

SAVER = Path(__file__).resolve().parent.parent / "notify" / "saver.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            extra = sorted((k, v) for k, v in sample.labels.items() if k != "stalwart_job")
            key = sample.name + "".join(f"{{{k}={v}}}" for k, v in extra)
            found[key] = sample.value
    return found


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return parse(reply.read().decode())
    except OSError:
        return {}


def wait_scrape(port: int, what: str, ok: object, timeout_s: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = scrape(port)
        if found and ok(found):  # type: ignore[operator]
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last scrape: {scrape(port)}")


def test_a_scrape_follows_checkpoints_and_a_kill_and_the_textfile_is_always_whole(
    tmp_path: Path, runtime_dir: Path
) -> None:
    port = free_port()
    textfile = tmp_path / "job.prom"
    argv = stalwart_argv(
        "run", "--state-dir", str(tmp_path / "state"), "--name", "mj",
        "--ckpt-dir", str(tmp_path / "ck"),
        "--set", f"metrics.listen=127.0.0.1:{port}",
        "--set", f"metrics.textfile={textfile}", "--set", "metrics.textfile_every_s=0.05",
        "--set", "checkpoint.interval.mode=fixed",
        "--set", "checkpoint.interval.fixed_interval_s=1",
        "--set", "restart.backoff_initial_s=0",
        "--set", "chaos.enabled=true", "--set", "chaos.kill_after_min_s=2.5",
        "--set", "chaos.kill_after_max_s=2.5", "--set", "chaos.max_kills=1",
        "--", sys.executable, str(SAVER), "--log", str(tmp_path / "log.jsonl"),
    )  # fmt: skip
    torn: list[str] = []
    reads = [0]
    stop = threading.Event()

    def read_textfile() -> None:
        while not stop.is_set():
            try:
                text = textfile.read_text()
            except FileNotFoundError:
                continue
            reads[0] += 1
            if not text.endswith("\n") or "stalwart_work_lost_seconds_total" not in text:
                torn.append(text[-100:])
            time.sleep(0.005)

    reader = threading.Thread(target=read_textfile)
    reader.start()
    supervisor = subprocess.Popen(
        argv, cwd=tmp_path, env=environment(runtime_dir), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = wait_scrape(
            port, "a checkpoint", lambda m: m.get("stalwart_checkpoint_step", -1) >= 0
        )
        assert first["stalwart_up"] == 1 and first["stalwart_attempts_total"] == 1
        running = ("STARTING", "RUNNING")  # RUNNING once up restart.started_after_s
        assert sum(first[f"stalwart_state{{stalwart_state={s}}}"] for s in running) == 1
        assert first["stalwart_heartbeat_age_seconds"] < 5
        assert first["stalwart_last_step"] > 0
        assert first["stalwart_checkpoint_stall_seconds_count"] >= 1
        assert first["stalwart_checkpoint_interval_seconds"] == 1
        assert first["stalwart_restart_budget_remaining"] == 10
        later = wait_scrape(
            port,
            "the injected kill and the relaunch",
            lambda m: m.get("stalwart_attempts_total") == 2 and m.get("stalwart_last_step", 0) > 0,
        )
        failures = {k: v for k, v in later.items() if k.startswith("stalwart_failures_total")}
        assert sum(failures.values()) == 1, failures
        assert later["stalwart_work_lost_seconds_total"] > 0
        assert later["stalwart_checkpoint_step"] >= first["stalwart_checkpoint_step"]
        assert "stalwart_mtbf_seconds" in later
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    finally:
        supervisor.kill()
        supervisor.communicate(timeout=5)
        stop.set()
        reader.join()
    assert supervisor.returncode == 0, err
    final = parse(textfile.read_text())
    assert final["stalwart_up"] == 0 and final["stalwart_attempts_total"] == 2
    assert reads[0] > 10 and not torn
