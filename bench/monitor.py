"""Monitoring costs: supervisor CPU under 100 Hz heartbeats, and notice-to-drain latency.

    .venv/bin/python bench/monitor.py [--seconds 30]

1. A client trainer heartbeats at 100 Hz under `stalwart run`; the supervisor's own
   CPU time (psutil) over the window, as a share of one core (goal <= 0.5 %).
2. A fake AWS metadata service on 127.0.0.1 serves a spot notice; the time from
   serving it to the trainer's exit after its emergency save, against the step
   time and the poll interval in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT = ROOT / "tests" / "trainers" / "heartbeat.py"
DRAINER = ROOT / "tests" / "trainers" / "drainer.py"


RAW_SENDER = """
import os, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setblocking(False)
path = os.environ["STALWART_NOTIFY_SOCKET"]
step, deadline = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    step += 1
    try:
        sock.sendto(f"STEP={step}".encode(), path)
    except OSError:
        pass
    time.sleep(0.01)
"""


def supervisor_cpu(seconds: float, raw: bool) -> float:
    """Supervisor CPU (% of one core) while the trainer steps at 100 Hz.

    raw=False: the Python client (which coalesces heartbeats to 10 Hz);
    raw=True: a sender that puts every one of 100 datagrams/s on the socket.
    """
    step_s = 0.01
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        steps = int((seconds + 5) / step_s)
        trainer = (
            [sys.executable, "-c", RAW_SENDER, str(seconds + 5)]
            if raw
            else [sys.executable, str(HEARTBEAT), "--steps", str(steps), "--step-s", str(step_s)]
        )
        argv = [
            sys.executable,
            "-m",
            "stalwart",
            "run",
            "--state-dir",
            f"{tmp}/state",
            "--",
            *trainer,
        ]
        env = {**os.environ, "XDG_RUNTIME_DIR": tmp}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)  # let start-up costs pass
            sup = psutil.Process(proc.pid)
            before, started = sup.cpu_times(), time.monotonic()
            time.sleep(seconds)
            after, elapsed = sup.cpu_times(), time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(30)
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / elapsed


class _Metadata(ThreadingHTTPServer):
    notice: str | None = None
    served_at: float | None = None


def _handler(server: _Metadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            self._reply(200, "token")

        def do_GET(self) -> None:
            if self.path.endswith("/spot/instance-action") and server.notice is not None:
                if server.served_at is None:
                    server.served_at = time.monotonic()
                self._reply(200, server.notice)
            else:
                self._reply(404, "Not Found")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def notice_to_drain(step_s: float, poll_s: float) -> float:
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        server = _Metadata(("127.0.0.1", 0), BaseHTTPRequestHandler)
        server.RequestHandlerClass = _handler(server)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        host, port = server.server_address[:2]
        log, ready = Path(tmp) / "log.jsonl", Path(tmp) / "ready"
        argv = [
            sys.executable,
            "-m",
            "stalwart",
            "run",
            "--state-dir",
            f"{tmp}/state",
            "--ckpt-dir",
            f"{tmp}/ck",
            "--set",
            "preemption.provider=aws",
            "--set",
            f"preemption.aws_base_url=http://{host!s}:{port}",
            "--set",
            f"preemption.poll_interval_s={poll_s}",
            "--set",
            f"preemption.timeout_s={poll_s}",
            "--set",
            "checkpoint.interval.mode=fixed",
            "--set",
            "checkpoint.interval.fixed_interval_s=1",
            "--",
            sys.executable,
            str(DRAINER),
            "--log",
            str(log),
            "--ready",
            str(ready),
            "--step-s",
            str(step_s),
        ]
        env = {**os.environ, "XDG_RUNTIME_DIR": tmp}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            when = datetime.fromtimestamp(time.time() + 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            server.notice = json.dumps({"action": "terminate", "time": when})
            while True:
                events = [json.loads(x) for x in log.read_text().splitlines()]
                if any(e["event"] == "drained" for e in events):
                    drained_at = time.monotonic()
                    break
                time.sleep(0.002)
            proc.wait(30)
        finally:
            proc.kill()
            proc.wait()
            server.shutdown()
            server.server_close()
            thread.join()
        assert server.served_at is not None
        return drained_at - server.served_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--drains", type=int, default=5)
    args = parser.parse_args()
    for raw, label in ((False, "python client, 100 steps/s"), (True, "raw 100 datagrams/s")):
        cpu = supervisor_cpu(args.seconds, raw)
        print(
            f"supervisor CPU over {args.seconds:.0f} s, {label}: "
            f"{cpu:.2f} % of one core (goal <= 0.5 %)"
        )
    step_s, poll_s = 0.05, 0.5
    latencies = [notice_to_drain(step_s, poll_s) for _ in range(args.drains)]
    p50 = statistics.median(latencies)
    print(
        f"notice served -> trainer drained (emergency save durable): p50 {1000 * p50:.0f} ms, "
        f"max {1000 * max(latencies):.0f} ms over {args.drains} drains"
    )
    print(f"  step time {1000 * step_s:.0f} ms: latency / step time = {p50 / step_s:.2f}")
    print(f"  poll interval {1000 * poll_s:.0f} ms: latency / poll interval = {p50 / poll_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
