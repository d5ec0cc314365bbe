"""HTTP to a link-local metadata service: short timeouts, no proxy, no redirects.

`http.client` rather than `urllib.request` on purpose: urllib honours
`http_proxy` from the environment and follows redirects, and a metadata request
must do neither. Failures become `MetadataError`s with a stable `key` (what
went wrong, where), which `ErrorLog` uses to log each kind of failure once.
"""

from __future__ import annotations

import http.client
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

MAX_BODY_BYTES = 64 * 1024
"""Metadata answers are a few hundred bytes; anything larger is refused unread."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed base URL: `http://host[:port][/prefix]`."""

    host: str
    port: int
    prefix: str

    def url(self, target: str) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}{target}"


def parse_base_url(url: str) -> Endpoint:
    """Parse and check a base URL; raises ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(
            f"base URL must start with http:// (metadata services are plain HTTP): {url!r}"
        )
    if not parts.hostname:
        raise ValueError(f"base URL has no host: {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"base URL may not have a query, fragment or credentials: {url!r}")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError(f"base URL has an invalid port: {url!r}") from exc
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return Endpoint(host=host, port=port, prefix=parts.path.rstrip("/"))


class MetadataError(Exception):
    """A metadata request failed; `key` names the kind of failure and the path."""

    def __init__(self, kind: str, path: str, detail: str) -> None:
        self.kind = kind
        self.path = path
        self.detail = detail
        super().__init__(f"{kind} from {path}: {detail}")

    @property
    def key(self) -> str:
        return f"{self.kind} {self.path}"


class BadResponse(ValueError):
    """A body that does not have the documented format (raised by the pure parsers)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def fetch(
    endpoint: Endpoint,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    body: bytes | None = None,
) -> Response:
    """One request on a fresh connection. Any status is returned; transport failures
    raise MetadataError. `timeout_s` bounds the connect and each read, not their sum."""
    path = target.split("?", 1)[0]
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        connection.request(method, endpoint.prefix + target, body=body, headers=dict(headers))
        response = connection.getresponse()
        data = response.read(MAX_BODY_BYTES + 1)
    except TimeoutError as exc:
        raise MetadataError("timeout", path, f"no answer within {timeout_s} s") from exc
    except http.client.HTTPException as exc:
        raise MetadataError("bad-response", path, f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise MetadataError("unreachable", path, f"{type(exc).__name__}: {exc}") from exc
    finally:
        connection.close()
    if len(data) > MAX_BODY_BYTES:
        raise MetadataError("bad-response", path, f"body larger than {MAX_BODY_BYTES} bytes")
    return Response(response.status, data)


def unexpected_status(path: str, response: Response) -> MetadataError:
    return MetadataError(f"http-{response.status}", path, f"HTTP {response.status}")


class ErrorLog:
    """Logs each kind of failure once, until a poll succeeds again.

    A metadata service that is down for an hour must not write 720 warnings;
    one per distinct failure, then one line when it recovers, is enough.
    """

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._active: set[str] = set()
        self._failed_polls = 0
        self._failed_this_poll = False

    def failed(self, key: str, message: str, *, exc_info: bool = False) -> None:
        self._failed_this_poll = True
        if key in self._active:
            self._log.debug("%s: %s", self._what, message)
            return
        self._active.add(key)
        self._log.warning(
            "%s: %s (further %r failures are not logged until it recovers)",
            self._what,
            message,
            key,
            exc_info=exc_info,
        )

    def poll_done(self) -> None:
        """End of one poll: failures are counted; a clean poll means recovery."""
        if self._failed_this_poll:
            self._failed_polls += 1
        elif self._active:
            self._log.info(
                "%s: metadata service answers again after %d failed poll(s)",
                self._what,
                self._failed_polls,
            )
            self._active.clear()
            self._failed_polls = 0
        self._failed_this_poll = False
