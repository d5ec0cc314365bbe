"""`stalwart` (the real CLI, in this process) with its checkpoint hashing held.

    python tests/preemption/held_jobs.py HOLD_DIR run ...   # the arguments of `stalwart`

Adoption hashes a foreign checkpoint under the keeper lock. Here the hashing of an
adoption waits until `HOLD_DIR/release` exists (at most HOLD_S), so an adoption stays
busy, holding the lock, for as long as a test needs: the shape of a 2 GB checkpoint
being hashed, without its size or its timing. `HOLD_DIR/hashing` says one is held;
`HOLD_DIR/both` says two heavy jobs (adoption, retention) are in flight at once, one of
them necessarily waiting, which on a two-worker pool shared with the preemption poll
left that poll no worker (issue 17).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from stalwart.checkpoint import observe
from stalwart.supervisor.keeper import CheckpointKeeper

HOLD_S = 20.0
"""Upper bound on holding an adoption (the test releases it at once when done)."""


def install(hold_dir: Path) -> None:
    real_digest = vars(observe)["file_digest"]  # the name adoption calls
    real_adopt = CheckpointKeeper.adopt
    real_retain = CheckpointKeeper.retain
    count_lock = threading.Lock()
    in_flight = [0]

    def held_digest(*args: Any, **kwargs: Any) -> Any:
        (hold_dir / "hashing").touch()
        deadline = time.monotonic() + HOLD_S
        while not (hold_dir / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_digest(*args, **kwargs)

    def counted(real: Any) -> Any:
        def job(*args: Any, **kwargs: Any) -> Any:
            with count_lock:
                in_flight[0] += 1
                if in_flight[0] >= 2:
                    (hold_dir / "both").touch()
            try:
                return real(*args, **kwargs)
            finally:
                with count_lock:
                    in_flight[0] -= 1

        return job

    vars(observe)["file_digest"] = held_digest
    CheckpointKeeper.adopt = counted(real_adopt)  # type: ignore[method-assign]
    CheckpointKeeper.retain = counted(real_retain)  # type: ignore[method-assign]


def main() -> int:
    install(Path(sys.argv[1]))
    from stalwart.cli import main as stalwart_main

    return stalwart_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
