"""The `checkpoint.remote` section of a job config: where checkpoints are mirrored.

Kept beside the mirror (not in `stalwart.config`) so the package owns its schema;
`stalwart.config` hangs it into the checkpoint section.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PositiveS = Annotated[float, Field(gt=0)]
NonNegativeS = Annotated[float, Field(ge=0)]


class RemoteConfig(BaseModel):
    """A durable copy of each committed checkpoint in object storage (spot instances)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str | None = None
    """Any fsspec URL: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix,
    file:///mnt/nfs/run-a; None: no remote copy."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to the fsspec file system (e.g. s3: {client_kwargs: {endpoint_url: ...}})."""
    keep_last: int = Field(default=3, ge=1)
    """Newest complete remote checkpoints kept; older ones are deleted after each upload
    (the newest complete one and the one just uploaded are never deleted)."""
    retry_initial_s: PositiveS = 2.0
    """Wait after the first failed upload attempt; doubles with each further failure."""
    retry_max_s: PositiveS = 120.0
    """Cap on the wait between upload attempts (uploads are retried until they succeed or a
    newer checkpoint replaces them)."""
    timeout_s: PositiveS = 60.0
    """Limit on connecting and on each read of one request (set for s3 unless
    storage_options.config_kwargs already sets connect_timeout or read_timeout)."""
    start_attempts: int = Field(default=3, ge=1)
    """Attempts of each remote operation at start (listing, one download) before the remote
    is declared unreachable and local checkpoints are used."""
    start_retry_s: NonNegativeS = 1.0
    """Wait between attempts at start (doubling)."""

    @field_validator("url")
    @classmethod
    def _has_protocol(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        parts = urlsplit(value)
        if not parts.scheme or "://" not in value:
            raise ValueError(
                f"{value!r} is not a URL with a protocol; use e.g. s3://bucket/prefix or "
                "file:///absolute/path"
            )
        if not (parts.netloc + parts.path).strip("/"):
            raise ValueError(f"{value!r} names no bucket or directory")
        return value

    @model_validator(mode="after")
    def _cap_covers_initial(self) -> RemoteConfig:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"retry_max_s ({self.retry_max_s}) must be >= "
                f"retry_initial_s ({self.retry_initial_s})"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def retry_delay_s(self, failures: int) -> float:
        """Wait after `failures` consecutive failed attempts (>= 1): doubling, capped."""
        return retry_delay_s(failures, self.retry_initial_s, self.retry_max_s)


def retry_delay_s(failures: int, initial_s: float, max_s: float) -> float:
    """`initial_s * 2**(failures-1)`, capped at `max_s`; 0 before any failure."""
    if failures <= 0:
        return 0.0
    return min(max_s, initial_s * 2.0 ** min(failures - 1, 62))
