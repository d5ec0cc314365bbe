"""The `preemption:` section of a job config.

Kept beside the watchers (not in `stalwart.config`) so the package owns its
schema; `stalwart.config.JobConfig` hangs it in as `preemption:`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stalwart.preemption.transport import parse_base_url

AWS_BASE_URL = "http://169.254.169.254"
# Google documents metadata.google.internal too; the address needs no DNS lookup, which
# a socket timeout would not bound.
GCP_BASE_URL = "http://169.254.169.254"
AZURE_BASE_URL = "http://169.254.169.254"

PositiveS = Annotated[float, Field(gt=0)]
NonNegativeS = Annotated[float, Field(ge=0)]


class PreemptionConfig(BaseModel):
    """Watching the cloud for preemption notices, and what a shutdown's SIGTERM means."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    provider: Literal["none", "auto", "aws", "gcp", "azure"] = "none"
    """Cloud to watch: none; auto (from DMI files, never a network probe); or aws, gcp, azure."""
    poll_interval_s: PositiveS = 5.0
    """Time between polls of the metadata service."""
    timeout_s: PositiveS = 1.0
    """Limit on connecting and on each read of one metadata request (it answers in ms)."""
    aws_base_url: str = AWS_BASE_URL
    """Base URL of the EC2 instance metadata service (IMDSv2)."""
    gcp_base_url: str = GCP_BASE_URL
    """Base URL of the Compute Engine metadata server."""
    azure_base_url: str = AZURE_BASE_URL
    """Base URL of the Azure instance metadata service (Scheduled Events)."""
    gcp_notice_s: PositiveS = 30.0
    """Time GCP leaves after `preempted` turns TRUE; the deadline is first sight plus this."""
    gcp_maintenance_notice_s: PositiveS = 60.0
    """Time assumed between a GCP maintenance event appearing and the maintenance itself."""
    sigterm_is_preemption: bool = False
    """Treat a stop signal to the supervisor as a preemption (exit 75, resume on next start)
    unless systemd says the system is not shutting down."""
    drain_margin_s: NonNegativeS = 5.0
    """Escalate (stop signal, then SIGKILL) this long before a notice's deadline."""

    @field_validator("aws_base_url", "gcp_base_url", "azure_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parse_base_url(value)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _timeout_fits_interval(self) -> PreemptionConfig:
        if self.timeout_s > self.poll_interval_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must be <= poll_interval_s ({self.poll_interval_s})"
            )
        return self
