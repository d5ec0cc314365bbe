"""Cloud detection from DMI files, and the factory; neither touches the network."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from stalwart.preemption import (
    PreemptionConfig,
    Provider,
    detect_provider,
    make_watcher,
    provider_from_dmi,
    read_dmi,
)
from stalwart.preemption.aws import AwsWatcher
from stalwart.preemption.azure import AzureWatcher
from stalwart.preemption.detect import AZURE_ASSET_TAG
from stalwart.preemption.gcp import GcpWatcher

MACHINES: dict[str, tuple[dict[str, str], Provider | None]] = {
    "aws-nitro": (
        {"sys_vendor": "Amazon EC2", "product_name": "g5.xlarge", "bios_vendor": "Amazon EC2"},
        Provider.AWS,
    ),
    "aws-xen": (
        {"sys_vendor": "Xen", "product_name": "HVM domU", "bios_version": "4.11.amazon"},
        Provider.AWS,
    ),
    "gcp": (
        {
            "sys_vendor": "Google",
            "product_name": "Google Compute Engine",
            "bios_vendor": "Google",
        },
        Provider.GCP,
    ),
    "azure": (
        {
            "sys_vendor": "Microsoft Corporation",
            "product_name": "Virtual Machine",
            "chassis_asset_tag": AZURE_ASSET_TAG,
        },
        Provider.AZURE,
    ),
    "hyper-v-on-a-desk": (
        {
            "sys_vendor": "Microsoft Corporation",
            "product_name": "Virtual Machine",
            "chassis_asset_tag": "0000-0000-0000",
        },
        None,
    ),
    "workstation": (
        {"sys_vendor": "Dell Inc.", "product_name": "Precision 7960", "bios_vendor": "Dell Inc."},
        None,
    ),
    "nothing-readable": ({}, None),
}


def fake_dmi(root: Path, fields: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, value in fields.items():
        (root / name).write_text(value + "\n")
    return root


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_detect_from_fake_dmi(tmp_path: Path, machine: str) -> None:
    fields, expected = MACHINES[machine]
    root = fake_dmi(tmp_path / "dmi", fields)
    assert read_dmi(root) == fields
    assert provider_from_dmi(fields) is expected
    assert detect_provider(root) is expected


def test_missing_dmi_dir_detects_nothing(tmp_path: Path) -> None:
    assert detect_provider(tmp_path / "absent") is None


def test_unreadable_field_is_skipped(tmp_path: Path) -> None:
    root = fake_dmi(tmp_path / "dmi", {"sys_vendor": "Google"})
    (root / "product_name").mkdir()  # reading a directory fails like a root-only file
    assert read_dmi(root) == {"sys_vendor": "Google"}


@pytest.mark.parametrize(
    ("machine", "watcher_type"),
    [("aws-nitro", AwsWatcher), ("gcp", GcpWatcher), ("azure", AzureWatcher)],
)
def test_auto_detection_makes_no_network_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str, watcher_type: type
) -> None:
    """Stricter than the loopback guard: not even 127.0.0.1, not even a name lookup."""
    touched: list[str] = []

    def forbid(name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            touched.append(name)
            raise AssertionError(f"auto-detection used the network: {name}{args!r}")

        return refuse

    monkeypatch.setattr(socket.socket, "connect", forbid("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", forbid("connect_ex"))
    monkeypatch.setattr(socket.socket, "sendto", forbid("sendto"))
    monkeypatch.setattr(socket, "create_connection", forbid("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", forbid("getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", forbid("gethostbyname"))
    root = fake_dmi(tmp_path / "dmi", MACHINES[machine][0])
    # The real default base URLs: building the watcher must not reach for them.
    watcher = make_watcher(PreemptionConfig(provider="auto"), dmi_root=root)
    assert isinstance(watcher, watcher_type)
    assert make_watcher(PreemptionConfig(provider="auto"), dmi_root=tmp_path / "none") is None
    assert touched == []


def test_provider_none_is_the_default_and_watches_nothing(tmp_path: Path) -> None:
    root = fake_dmi(tmp_path / "dmi", MACHINES["gcp"][0])
    assert PreemptionConfig().provider == "none"
    assert make_watcher(PreemptionConfig(), dmi_root=root) is None


def test_explicit_provider_ignores_dmi(tmp_path: Path) -> None:
    root = fake_dmi(tmp_path / "dmi", MACHINES["gcp"][0])
    config = PreemptionConfig(provider="azure", azure_base_url="http://127.0.0.1:9/prefix/")
    watcher = make_watcher(config, dmi_root=root)
    assert isinstance(watcher, AzureWatcher)
    assert watcher.provider is Provider.AZURE
    assert watcher.base_url == "http://127.0.0.1:9/prefix"
