"""Which cloud is this? Read from the DMI (SMBIOS) files the kernel exposes; no network.

Probing metadata addresses to find out would send packets from every laptop
and on-prem box that runs stalwart with `provider: auto`; the firmware
strings say the same thing without leaving the machine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from stalwart.preemption.model import Provider

logger = logging.getLogger(__name__)

DMI_ROOT = Path("/sys/class/dmi/id")
DMI_FIELDS = ("sys_vendor", "product_name", "bios_vendor", "bios_version", "chassis_asset_tag")
MAX_FIELD_BYTES = 256
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
"""Azure's chassis asset tag; plain Hyper-V shares the vendor string but not this tag."""


def read_dmi(root: Path = DMI_ROOT) -> dict[str, str]:
    """The readable DMI fields under `root`, stripped; missing or unreadable ones are left out."""
    fields: dict[str, str] = {}
    for name in DMI_FIELDS:
        try:
            with (root / name).open("rb") as handle:
                raw = handle.read(MAX_FIELD_BYTES)
        except OSError:
            continue
        fields[name] = raw.decode("utf-8", errors="replace").strip()
    return fields


def provider_from_dmi(fields: Mapping[str, str]) -> Provider | None:
    """Pure: the cloud these firmware strings belong to, or None."""
    sys_vendor = fields.get("sys_vendor", "")
    product_name = fields.get("product_name", "")
    bios_vendor = fields.get("bios_vendor", "")
    bios_version = fields.get("bios_version", "")
    if "Amazon EC2" in (sys_vendor, bios_vendor) or "amazon" in bios_version.lower():
        # Nitro instances say "Amazon EC2"; older Xen ones only "4.11.amazon" in bios_version.
        return Provider.AWS
    if sys_vendor == "Google" or product_name == "Google Compute Engine" or bios_vendor == "Google":
        return Provider.GCP
    if fields.get("chassis_asset_tag", "") == AZURE_ASSET_TAG:
        return Provider.AZURE
    return None


def detect_provider(dmi_root: Path = DMI_ROOT) -> Provider | None:
    """The cloud this machine runs in, from DMI files only, or None."""
    fields = read_dmi(dmi_root)
    provider = provider_from_dmi(fields)
    logger.debug("DMI fields under %s: %s -> %s", dmi_root, fields, provider)
    return provider
