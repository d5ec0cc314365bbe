"""A long run of the supervisor core's stateful test (tests/lifecycle_model.py).

`make test` runs the machine with bounded examples; this runs many more, and prints how
many sequences and steps were checked and how long it took.

    .venv/bin/python bench/stateful_core.py [--examples 5000] [--steps 60]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lifecycle_model import LifecycleModel

logging.disable(logging.CRITICAL)  # the core logs every drain it runs: thousands of them


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    counted = {"events": 0, "runs": 0}
    original_init, original_feed = LifecycleModel.__init__, LifecycleModel.feed

    def init(self: LifecycleModel) -> None:
        counted["runs"] += 1
        original_init(self)

    def feed(self: LifecycleModel, event: object) -> None:
        counted["events"] += 1
        original_feed(self, event)  # type: ignore[arg-type]

    LifecycleModel.__init__ = init  # type: ignore[method-assign]
    LifecycleModel.feed = feed  # type: ignore[method-assign]
    started = time.perf_counter()
    run_state_machine_as_test(
        LifecycleModel,
        settings=settings(
            max_examples=args.examples,
            stateful_step_count=args.steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
    took = time.perf_counter() - started
    print(
        f"{counted['runs']} sequences, {counted['events']} events fed to the core, "
        f"every invariant held; {took:.1f} s ({counted['events'] / took:,.0f} events/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
