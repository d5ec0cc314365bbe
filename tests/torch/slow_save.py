"""Runs examples/train_tiny.py with each checkpoint fsync slowed down, so that a test can
kill the trainer while an asynchronous save is being written.

Environment: SLOW_SAVE_DIR (where `pid-<attempt>` and `saving` markers are written),
SLOW_SAVE_DELAY_S (seconds added to each fsync of a checkpoint file or directory).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

from stalwart.checkpoint import FsOps

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_tiny.py"


def main() -> None:
    markers = Path(os.environ["SLOW_SAVE_DIR"])
    delay_s = float(os.environ["SLOW_SAVE_DELAY_S"])
    attempt = os.environ.get("STALWART_ATTEMPT", "0")
    (markers / "pid.tmp").write_text(str(os.getpid()))
    os.replace(markers / "pid.tmp", markers / f"pid-{attempt}")
    fsync = FsOps.fsync

    def slow_fsync(self: FsOps, fd: int) -> None:
        (markers / "saving.tmp").write_text(str(os.getpid()))
        os.replace(markers / "saving.tmp", markers / "saving")
        time.sleep(delay_s)
        fsync(self, fd)

    FsOps.fsync = slow_fsync  # type: ignore[method-assign]
    sys.argv = [str(EXAMPLE), *sys.argv[1:]]
    runpy.run_path(str(EXAMPLE), run_name="__main__")


if __name__ == "__main__":
    main()
