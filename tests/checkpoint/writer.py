"""A checkpoint writer run as a child process by the tests.

    python writer.py ROOT STEP SIZE_BYTES STOP_AT

Saves checkpoint STEP (files model.bin and shards/0.bin, content derived from STEP)
through the store. At STOP_AT (a CommitStage value, or "partial_write": half of
model.bin written) it prints the point's name and blocks reading stdin: the parent
SIGKILLs it there. STOP_AT "none" runs to the end. Errors are printed as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stalwart.checkpoint import CheckpointStore, CommitFailed, CommitStage


def content(step: int, size_bytes: int, salt: bytes) -> bytes:
    pattern = f"{step}:".encode() + salt
    return (pattern * (size_bytes // len(pattern) + 1))[:size_bytes]


def main() -> int:
    root, step, size_bytes, stop_at = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
    )

    def pause(point: str) -> None:
        print(point, flush=True)
        sys.stdin.readline()  # the parent kills us while we wait here

    def on_stage(stage: CommitStage) -> None:
        if stage.value == stop_at:
            pause(stage.value)

    store = CheckpointStore(root, on_stage=on_stage)
    data = content(step, size_bytes, b"model")
    try:
        with store.begin(step) as tx:
            if stop_at == "partial_write":
                with open(tx.path("model.bin"), "wb") as handle:
                    handle.write(data[: size_bytes // 2])
                    handle.flush()
                    pause("partial_write")
            tx.write_bytes("model.bin", data)
            tx.write_bytes("shards/0.bin", content(step, size_bytes // 3, b"shard"))
    except CommitFailed as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return 1
    print(json.dumps({"committed": tx.name}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
