"""Preemption: cloud notices (AWS, GCP, Azure) and the shutdown SIGTERM, as plain data.

Watchers only observe: `poll(now_unix)` returns a `PreemptionNotice` or None
and never raises; the supervisor decides what a notice means (emergency
checkpoint, drain, escalation before the deadline, exit 75).

    watcher = make_watcher(config.preemption)      # None: nothing to watch
    notice = watcher.poll(time.time())             # from the scheduler thread
    ...drain...
    watcher.acknowledge(notice)                    # Azure only; False elsewhere
"""

from stalwart.preemption.config import PreemptionConfig
from stalwart.preemption.detect import DMI_ROOT, detect_provider, provider_from_dmi, read_dmi
from stalwart.preemption.factory import make_watcher, resolve_provider
from stalwart.preemption.model import (
    NoticeKind,
    PreemptionNotice,
    Provider,
    Watcher,
    most_urgent,
)
from stalwart.preemption.shutdown import ShutdownEvidence, probe_shutdown, sigterm_meaning

__all__ = [
    "DMI_ROOT",
    "NoticeKind",
    "PreemptionConfig",
    "PreemptionNotice",
    "Provider",
    "ShutdownEvidence",
    "Watcher",
    "detect_provider",
    "make_watcher",
    "most_urgent",
    "probe_shutdown",
    "provider_from_dmi",
    "read_dmi",
    "resolve_provider",
    "sigterm_meaning",
]
