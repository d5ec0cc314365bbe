"""The `preemption:` config section."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stalwart.preemption import PreemptionConfig


def test_defaults() -> None:
    config = PreemptionConfig()
    assert config.provider == "none"
    assert config.timeout_s <= config.poll_interval_s
    assert config.gcp_notice_s == 30.0
    assert not config.sigterm_is_preemption
    assert config.aws_base_url.startswith("http://")


def test_every_field_documents_itself() -> None:
    for name, field in PreemptionConfig.model_fields.items():
        assert field.description, f"{name} has no docstring"


@pytest.mark.parametrize(
    "data",
    [
        {"provider": "oracle"},
        {"poll_interval_s": 0},
        {"timeout_s": -1},
        {"timeout_s": 10, "poll_interval_s": 5},
        {"aws_base_url": "https://169.254.169.254"},
        {"gcp_base_url": "metadata.google.internal"},
        {"azure_base_url": "http://"},
        {"azure_base_url": "http://127.0.0.1:99999"},
        {"aws_base_url": "http://127.0.0.1/?x=1"},
        {"drain_margin_s": -1},
        {"poll_interval": 5},
    ],
)
def test_invalid(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PreemptionConfig.model_validate(data)


def test_frozen_and_round_trip() -> None:
    config = PreemptionConfig(provider="gcp", gcp_base_url="http://127.0.0.1:8080/", gcp_notice_s=2)
    assert config.gcp_base_url == "http://127.0.0.1:8080"
    assert PreemptionConfig.model_validate(config.model_dump(mode="json")) == config
    with pytest.raises(ValidationError):
        config.provider = "aws"  # type: ignore[misc]
