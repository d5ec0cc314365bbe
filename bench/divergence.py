"""False positives and detection delay of the divergence policy (issue 22).

    .venv/bin/python bench/divergence.py                 # synthetic curves + the demo jobs' loss
    .venv/bin/python bench/divergence.py --no-real       # synthetic only (seconds)

Synthetic healthy curves: decay to a floor, multiplicative noise up to 20 % (normal, or
Student's t with 3 degrees of freedom), slow bumps under 15 %, and rare outlier bursts that
come back (1 to persist_reports - 1 reports at 2-50x). Each curve is fed to a fresh
`LossMonitor` with the default config and with shorter persistence; a call on a healthy
curve is a false positive. Spikes: the same curves with the loss multiplied by 3-1e6 from a
random report on; the delay is in reports after the spike began.

Real curves: the per-step training loss of examples/train_tiny.py (the demo job) and of
examples/train_spiky.py without its poison, fed every step (more often than a heartbeat
would) and every 10th step.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stalwart.policy.divergence import DivergenceConfig, LossMonitor

ROOT = Path(__file__).resolve().parents[1]


def healthy_curve(rng: random.Random, reports: int, persist: int) -> list[float]:
    floor = rng.uniform(0.01, 3.0)
    amplitude = rng.uniform(0.0, 10.0) * floor
    tau = rng.uniform(5, reports)
    noise = rng.uniform(0.0, 0.2)
    heavy = rng.random() < 0.5
    bump_at, bump = rng.randrange(reports), rng.uniform(0.0, 0.15)
    curve, outlier_left, gap = [], 0, False
    for t in range(reports):
        level = floor + amplitude * math.exp(-t / tau)
        level *= 1 + bump * (1 - math.exp(-max(t - bump_at, 0) / 20))
        eps = rng.gauss(0, 1)
        if heavy:
            eps /= math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)
        value = level * max(1 + noise * eps, 0.05)
        if outlier_left == 0 and not gap and rng.random() < 0.01 and persist > 1:
            outlier_left = rng.randint(1, persist - 1)
        gap = False
        if outlier_left:
            outlier_left -= 1
            gap = outlier_left == 0
            value *= rng.uniform(2, 50)
        curve.append(value)
    return curve


def calls(config: DivergenceConfig, curve: list[float]) -> list[int]:
    monitor = LossMonitor(config)
    return [i for i, loss in enumerate(curve) if monitor.observe(i, loss) is not None]


def synthetic(curves: int, reports: int) -> None:
    print(f"synthetic healthy curves: {curves} x {reports} reports each")
    for bursts, label in ((0, "noise only"), (10, "with outlier bursts of 1-9 reports")):
        for persist in (10, 5, 3):
            config = DivergenceConfig(persist_reports=persist)
            flagged = sum(
                bool(calls(config, healthy_curve(random.Random(s), reports, bursts)))
                for s in range(curves)
            )
            print(
                f"  {label}, persist_reports={persist:2d}: {flagged} of {curves} curves called "
                f"diverged ({flagged / curves:.2%}; {flagged / (curves * reports):.1e} per report)"
            )
    config = DivergenceConfig()
    delays, missed = [], 0
    for s in range(curves):
        rng = random.Random(10_000 + s)
        curve = healthy_curve(rng, reports, 0)
        begin = rng.randrange(config.warmup_reports + 20, reports - 30)
        factor = math.exp(rng.uniform(math.log(3), math.log(1e6)))
        spiked = curve[:begin] + [v * factor for v in curve[begin:]]
        found = [i for i in calls(config, spiked) if i >= begin]
        if found:
            delays.append(found[0] - begin + 1)
        else:
            missed += 1
    delays.sort()
    print(
        f"spikes x3..x1e6 that stay, on the noise-only curves (default config): detected "
        f"{len(delays)} of {curves}, after {delays[0]}..{delays[-1]} reports (median "
        f"{statistics.median(delays):g}, 95th percentile {delays[int(0.95 * len(delays))]})"
    )
    nan_delays = []
    for s in range(curves):
        rng = random.Random(20_000 + s)
        curve = healthy_curve(rng, reports, 10)
        begin = rng.randrange(reports)
        found = calls(config, [*curve[:begin], math.nan])
        nan_delays.append(found[0] - begin + 1 if found and found[0] >= begin else None)
    print(
        f"a NaN at a random report (curves with bursts): detected at that report in "
        f"{sum(d == 1 for d in nan_delays)} of {curves}"
    )


def real_losses(script: str, args: list[str]) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), *args, "--ckpt-dir",
             str(Path(tmp) / "ck"), "--log", str(log), "--out", str(Path(tmp) / "f.json")],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [r["loss"] for r in rows if "step" in r]


def real() -> None:
    jobs = {
        "train_tiny.py (demo job, 2000 steps, default model)": (
            "train_tiny.py",
            ["--steps", "2000", "--print-every", "100000"],
        ),
        "train_spiky.py without poison (400 steps)": ("train_spiky.py", ["--poison-len", "0"]),
    }
    for label, (script, args) in jobs.items():
        losses = real_losses(script, args)
        for every in (1, 10):
            for persist in (10, 3):
                found = calls(DivergenceConfig(persist_reports=persist), losses[::every])
                print(
                    f"{label}: every {every} step(s), persist_reports={persist}: "
                    f"{len(losses[::every])} reports, {len(found)} divergence(s) called"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", type=int, default=500)
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--no-real", action="store_true")
    args = parser.parse_args()
    synthetic(args.curves, args.reports)
    if not args.no_real:
        real()
    return 0


if __name__ == "__main__":
    sys.exit(main())
