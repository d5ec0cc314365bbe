"""Build the watcher a config asks for."""

from __future__ import annotations

import logging
from pathlib import Path

from stalwart.preemption.aws import AwsWatcher
from stalwart.preemption.azure import AzureWatcher
from stalwart.preemption.config import PreemptionConfig
from stalwart.preemption.detect import DMI_ROOT, detect_provider
from stalwart.preemption.gcp import GcpWatcher
from stalwart.preemption.model import Provider, Watcher

logger = logging.getLogger(__name__)


def resolve_provider(config: PreemptionConfig, *, dmi_root: Path = DMI_ROOT) -> Provider | None:
    """The cloud to watch: none, the configured one, or the one DMI files name for auto."""
    if config.provider == "none":
        return None
    if config.provider == "auto":
        detected = detect_provider(dmi_root)
        if detected is None:
            logger.info("preemption: no cloud recognised from %s; not watching", dmi_root)
        else:
            logger.info("preemption: detected %s from %s", detected.value, dmi_root)
        return detected
    return Provider(config.provider)


def make_watcher(config: PreemptionConfig, *, dmi_root: Path = DMI_ROOT) -> Watcher | None:
    """The watcher for this config, or None when there is nothing to watch.

    Makes no network request: watchers connect only when polled.
    """
    provider = resolve_provider(config, dmi_root=dmi_root)
    if provider is Provider.AWS:
        return AwsWatcher(config.aws_base_url, timeout_s=config.timeout_s)
    if provider is Provider.GCP:
        return GcpWatcher(
            config.gcp_base_url,
            timeout_s=config.timeout_s,
            notice_s=config.gcp_notice_s,
            maintenance_notice_s=config.gcp_maintenance_notice_s,
        )
    if provider is Provider.AZURE:
        return AzureWatcher(config.azure_base_url, timeout_s=config.timeout_s)
    return None
