"""A save that runs out of space, then the next start, in one child process.

    python diskfull.py ROOT rlimit   # RLIMIT_FSIZE of 1 MiB: writes fail with EFBIG
    python diskfull.py ROOT tmpfs    # ROOT is a 1 MiB tmpfs (mounted by the caller in a
                                     # private mount namespace): writes fail with ENOSPC

Prints one JSON line: what the failed save raised, what was left in ROOT, what the next
start removed and resumed from.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

from stalwart.checkpoint import CheckpointStore, CommitFailed, prepare_resume, scan

LIMIT_BYTES = 1024 * 1024


def main() -> None:
    root, mode = Path(sys.argv[1]), sys.argv[2]
    store = CheckpointStore(root)
    store.save_bytes(1, {"model.bin": b"p" * 10_000})
    if mode == "rlimit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, resource.RLIM_INFINITY))
    error: dict[str, str] = {}
    try:
        with store.begin(2) as tx:
            tx.write_bytes("small.bin", b"s" * 1000)
            tx.write_bytes("model.bin", b"m" * (4 * LIMIT_BYTES))
    except CommitFailed as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
    if mode == "rlimit":
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    left = sorted(e.name for e in scan(root).staging)
    decision = prepare_resume(root)
    report = {
        "error": error,
        "staging_after_failure": left,
        "removed_at_start": [p.name for p in decision.removed_leftovers],
        "resume_from": decision.resume_from.name if decision.resume_from else None,
        "resume_state": decision.resume_from.state.value if decision.resume_from else None,
        "entries": sorted(p.name for p in root.iterdir()),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
