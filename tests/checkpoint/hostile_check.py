"""Run check_foreign on each path given and print one JSON line per path: status, reason,
seconds, and peak Python allocation (tracemalloc) and RSS growth, for the hostile-input tests.

Run as a child process so the measurements see nothing of the test process.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

from stalwart.checkpoint import check_foreign


def main() -> None:
    for arg in sys.argv[1:]:
        path = Path(arg)
        rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        verdict = check_foreign(path, full=True)
        elapsed_s = time.perf_counter() - started
        rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib
        tracemalloc.start()
        check_foreign(path, full=True)
        _, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        record = {
            "name": path.name,
            "status": verdict.status.value,
            "defect": verdict.problem.defect.value if verdict.problem else None,
            "reason": verdict.reason,
            "seconds": elapsed_s,
            "peak_bytes": peak_bytes,
            "rss_growth_bytes": rss_growth_kib * 1024,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
