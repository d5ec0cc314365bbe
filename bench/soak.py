"""A long soak: minutes of random faults of every kind against the real supervisor.

    .venv/bin/python bench/soak.py --minutes 10 [--seed 1]

The trainer is the chaos suite's hash-chain job (tests/chaos/hashchain.py): its final
digest is bitwise that of an uninterrupted run only if no step was lost, repeated or
corrupted. While it trains, a fault injector picks at random among:

- trainer kill       (SIGKILL to the trainer's group)
- supervisor kill    (SIGKILL to `stalwart run`; the soak starts a new one)
- hang               (SIGSTOP to the trainer: must be detected, dumped, killed)
- corruption         (one character of the newest checkpoint's state changed)
- preemption         (the fake GCP metadata server on 127.0.0.1 says preempted=TRUE;
                      stalwart drains and exits 75; the soak starts it again)

At the end it prints what was injected and recovered, checkpoints written, verified
and quarantined, and the worst work lost per interruption, and exits non-zero if the
final state differs from an uninterrupted run, a corrupt checkpoint was ever resumed,
or work lost exceeded one advised interval plus one save.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.analysis import (  # noqa: E402
    interruptions,
    longest_save_s,
    read_log,
    reference_chain,
)
from tests.preemption.fake_metadata import FakeMetadata, Reply  # noqa: E402

from stalwart.preemption.gcp import MAINTENANCE_PATH, PREEMPTED_PATH  # noqa: E402

TRAINER = ROOT / "tests" / "chaos" / "hashchain.py"
STEP_S = 0.004
INTERVAL_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-every-s", type=float, default=3.0, help="mean time between faults")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset")
    parser.add_argument("--keep", help="copy the work directory here when the verdict fails")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    budget_s = args.minutes * 60
    steps = int(budget_s * 0.4 / STEP_S)  # about 40 % of the time is forward progress
    injected: Counter[str] = Counter()
    faults = [f for f in args.faults.split(",") if f in FAULTS]
    fake = FakeMetadata.start()
    fake.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
    fake.route("GET", MAINTENANCE_PATH, Reply(200, "NONE"))
    with tempfile.TemporaryDirectory(prefix="swsoak-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "log.jsonl"
        argv = [
            sys.executable,
            "-m",
            "stalwart",
            "run",
            "--state-dir",
            str(tmp / "state"),
            "--ckpt-dir",
            str(tmp / "ck"),
            "--max-restarts",
            "1000",
            "--set",
            "restart.backoff_initial_s=0.05",
            "--set",
            "restart.backoff_max_s=0.5",
            "--set",
            "checkpoint.interval.mode=fixed",
            "--set",
            f"checkpoint.interval.fixed_interval_s={INTERVAL_S}",
            "--set",
            "monitor.notify_batch_s=0.05",
            "--set",
            "hang.floor_s=1",
            "--set",
            "hang.factor=5",
            "--set",
            "hang.first_step_s=5",
            "--set",
            "hang.warmup_heartbeats=3",
            "--set",
            "hang.dump_wait_s=0.5",
            "--set",
            "restart.poison_after_failures=1000",
            "--set",
            "preemption.provider=gcp",
            "--set",
            f"preemption.gcp_base_url={fake.base_url}",
            "--set",
            "preemption.poll_interval_s=0.5",
            "--set",
            "preemption.timeout_s=0.5",
            "--set",
            "preemption.gcp_notice_s=5",
            "--",
            sys.executable,
            str(TRAINER),
            "--steps",
            str(steps),
            "--step-s",
            str(STEP_S),
            "--log",
            str(log),
        ]
        env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp)}
        started = time.monotonic()
        supervisor: subprocess.Popen[bytes] | None = None
        exits: Counter[int] = Counter()
        next_fault = started + rng.expovariate(1 / args.fault_every_s)
        try:
            while True:
                if supervisor is None or supervisor.poll() is not None:
                    if supervisor is not None:
                        exits[supervisor.returncode] += 1
                        if supervisor.returncode == 0:
                            break
                        fake.route("GET", PREEMPTED_PATH, Reply(200, "FALSE"))
                    if time.monotonic() - started > budget_s * 1.5:
                        print("soak: out of time before training finished")
                        break
                    supervisor = subprocess.Popen(
                        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                if time.monotonic() >= next_fault and time.monotonic() - started < budget_s:
                    next_fault = time.monotonic() + rng.expovariate(1 / args.fault_every_s)
                    fault = rng.choice(faults)
                    if fault != "corruption" or settled(log, _trainer(supervisor)):
                        inject(fault, supervisor, tmp, fake, injected)
                time.sleep(0.02)
        finally:
            if supervisor is not None and supervisor.poll() is None:
                supervisor.send_signal(signal.SIGTERM)
                supervisor.wait(60)
            fake.stop()
        verdict = report(
            tmp,
            read_log(log),
            steps,
            injected=injected,
            exits=exits,
            elapsed_s=time.monotonic() - started,
        )
        if verdict != 0 and args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
        return verdict


FAULTS = ("trainer kill", "supervisor kill", "hang", "corruption", "preemption")


def settled(log: Path, trainer: psutil.Process | None) -> bool:
    """The running trainer loaded its checkpoint over a second ago.

    Corruption is injected only then: between the supervisor verifying a checkpoint and
    the trainer reading it is a window no verification can close (the trainer's own
    check catches that case; it is not what this soak measures).
    """
    starts = [e for e in read_log(log) if e["event"] == "start"]
    return (
        trainer is not None
        and bool(starts)
        and starts[-1]["pid"] == trainer.pid
        and time.monotonic() - starts[-1]["t"] > 1.0
    )


def _trainer(supervisor: subprocess.Popen[bytes]) -> psutil.Process | None:
    try:
        for child in psutil.Process(supervisor.pid).children():
            if "hashchain.py" in " ".join(child.cmdline()):
                return child
    except psutil.Error:
        pass
    return None


def inject(
    fault: str,
    supervisor: subprocess.Popen[bytes],
    tmp: Path,
    fake: FakeMetadata,
    injected: Counter[str],
) -> None:
    trainer = _trainer(supervisor)
    if fault == "supervisor kill":
        supervisor.kill()
        supervisor.wait()
    elif fault == "preemption":
        fake.route("GET", PREEMPTED_PATH, Reply(200, "TRUE"))
    elif fault == "corruption":
        saves = sorted((tmp / "ck").glob("step-*"))
        if not saves:
            return
        state = saves[-1] / "state.json"
        try:
            text = state.read_text()
            at = text.index('"chain": "') + len('"chain": "')
            state.write_text(text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :])
        except (OSError, ValueError):
            return
    elif trainer is None:
        return
    elif fault == "trainer kill":
        os.killpg(trainer.pid, signal.SIGKILL)
    elif fault == "hang":
        trainer.suspend()
    injected[fault] += 1


def report(
    tmp: Path,
    log: list[dict[str, Any]],
    steps: int,
    *,
    injected: Counter[str],
    exits: Counter[int],
    elapsed_s: float,
) -> int:
    from stalwart.journal import Journal

    done = [e for e in log if e["event"] == "done"]
    correct = bool(done) and done[-1]["chain"] == reference_chain(steps)
    corrupt_resumes = [e for e in log if e["event"] == "corrupt-resume"]
    saves = [e for e in log if e["event"] == "save"]
    with Journal(tmp / "state" / "journal.sqlite") as journal:
        attempts = journal.attempts()
        moved = journal.quarantines()
    quarantined = Counter(q.reason for q in moved)
    base_bound = INTERVAL_S + longest_save_s(log) + 0.2
    lost, beyond = [], []
    for item in interruptions(log):
        # Each checkpoint found corrupt at this resume costs one more interval of work.
        skipped = sum(item.ended_wall <= q.at_unix <= item.resumed_wall for q in moved)
        lost.append(item.lost_s)
        if item.lost_s > base_bound + skipped * INTERVAL_S:
            beyond.append(item.lost_s)
    kinds = Counter(a.kind for a in attempts)
    print(f"soak: {elapsed_s / 60:.1f} min, {steps} steps of training")
    print(f"  faults injected   {dict(injected)} (total {sum(injected.values())})")
    print(f"  supervisor exits  {dict(exits)} (75 = preempted, -9 = killed)")
    print(f"  attempts          {len(attempts)}: {dict(kinds)}")
    print(
        f"  checkpoints       {len(saves)} written and verified at resume; "
        f"quarantined {dict(quarantined)}"
    )
    print(
        f"  work lost         worst {max(lost, default=0.0):.3f} s per interruption; bound "
        f"{base_bound:.3f} s (interval {INTERVAL_S} s + longest save + 0.2 s, plus one "
        f"interval per checkpoint found corrupt at that resume); "
        f"total {sum(lost):.1f} s over {len(lost)} interruptions"
    )
    print(f"  corrupt resumes   {len(corrupt_resumes)}")
    print(f"  final state       {'bitwise equal to an uninterrupted run' if correct else 'WRONG'}")
    ok = correct and not corrupt_resumes and not beyond
    print(
        f"  verdict           {'OK' if ok else 'FAILED'} "
        f"({len(beyond)} interruptions lost more than the bound)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
