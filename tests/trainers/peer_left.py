"""A worker whose job another node drained: it says PEER_DRAIN=1, then lingers the way
torchrun's agent does at its exit barrier, waiting for the node that left. The attempt
after it finishes. Standard library and stalwart.client only."""

from __future__ import annotations

import os
import time

from stalwart.client import Client


def main() -> int:
    if int(os.environ.get("STALWART_ATTEMPT", "0")) > 0:
        return 0
    with Client() as client:
        client.step(1)
        client.send(PEER_DRAIN=1)
    time.sleep(60)  # killed by the stop signal long before this
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
