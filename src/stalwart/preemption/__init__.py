"""Preemption: cloud notices (AWS, GCP, Azure) and the shutdown SIGTERM, as plain data.

Watchers only observe: `poll(now_unix)` returns a `PreemptionNotice` or None
and never raises; the supervisor decides what a notice means (emergency
checkpoint, drain, escalation before the deadline, exit 75).

    watcher = make_watcher(config.preemption)      # None: nothing to watch
    notice = watcher.poll(time.time())             # from the scheduler thread
    ...drain...
    watcher.acknowledge(notice)                    # Azure only; False elsewhere
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart import lazy

# Exports load on first use, so importing one submodule (e.g. the config section) does not
# load the others and what they import.
_EXPORTS: dict[str, str] = {
    "DMI_ROOT": "stalwart.preemption.detect",
    "NoticeKind": "stalwart.preemption.model",
    "PreemptionConfig": "stalwart.preemption.config",
    "PreemptionNotice": "stalwart.preemption.model",
    "Provider": "stalwart.preemption.model",
    "ShutdownEvidence": "stalwart.policy.sigterm",
    "Watcher": "stalwart.preemption.model",
    "detect_provider": "stalwart.preemption.detect",
    "make_watcher": "stalwart.preemption.factory",
    "most_urgent": "stalwart.preemption.model",
    "probe_shutdown": "stalwart.preemption.shutdown",
    "provider_from_dmi": "stalwart.preemption.detect",
    "read_dmi": "stalwart.preemption.detect",
    "resolve_provider": "stalwart.preemption.factory",
    "sigterm_meaning": "stalwart.policy.sigterm",
}

if TYPE_CHECKING:
    from stalwart.policy.sigterm import ShutdownEvidence as ShutdownEvidence
    from stalwart.policy.sigterm import sigterm_meaning as sigterm_meaning
    from stalwart.preemption.config import PreemptionConfig as PreemptionConfig
    from stalwart.preemption.detect import DMI_ROOT as DMI_ROOT
    from stalwart.preemption.detect import detect_provider as detect_provider
    from stalwart.preemption.detect import provider_from_dmi as provider_from_dmi
    from stalwart.preemption.detect import read_dmi as read_dmi
    from stalwart.preemption.factory import make_watcher as make_watcher
    from stalwart.preemption.factory import resolve_provider as resolve_provider
    from stalwart.preemption.model import NoticeKind as NoticeKind
    from stalwart.preemption.model import PreemptionNotice as PreemptionNotice
    from stalwart.preemption.model import Provider as Provider
    from stalwart.preemption.model import Watcher as Watcher
    from stalwart.preemption.model import most_urgent as most_urgent
    from stalwart.preemption.shutdown import probe_shutdown as probe_shutdown

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


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())
