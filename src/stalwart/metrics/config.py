"""The `metrics` config section: an HTTP endpoint to scrape, a textfile for node_exporter."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from stalwart.policy.section import PositiveS, Section


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9464` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class MetricsConfig(Section):
    """Prometheus metrics (`pip install 'stalwart[metrics]'`); both off by default."""

    listen: str | None = None
    """Serve /metrics on HOST:PORT (e.g. `127.0.0.1:9464`; port 0 picks a free one, logged)."""
    textfile: Path | None = None
    """Also write the metrics to this file, atomically, for node_exporter's textfile
    collector (its name must end in `.prom`)."""
    textfile_every_s: PositiveS = 15.0
    """How often the textfile is rewritten (and at each attempt's end, and at exit)."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("textfile")
    @classmethod
    def _prom(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".prom":
            raise ValueError("must end in .prom (node_exporter reads only those)")
        return value
