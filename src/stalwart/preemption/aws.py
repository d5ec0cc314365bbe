"""AWS: spot interruption notices and rebalance recommendations from IMDSv2.

IMDSv2 needs a session token (`PUT /latest/api/token`), cached here until
shortly before its TTL and fetched again once when a read answers 401. The
interruption notice (`spot/instance-action`) gives the action and its time,
two minutes ahead; 404 means none. The rebalance recommendation is advisory:
the instance is at higher risk, nothing is scheduled.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from stalwart.preemption.model import NoticeKind, PreemptionNotice, Provider
from stalwart.preemption.transport import BadResponse, MetadataError, Response, unexpected_status
from stalwart.preemption.watcher import PollingWatcher, parsed

logger = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL_S = 21600
"""Lifetime asked for a session token (the IMDS maximum, six hours)."""
TOKEN_REFRESH_MARGIN_S = 60.0
"""A cached token is replaced this long before it would expire."""
MAX_TOKEN_BYTES = 4096

ACTIONS = {
    "terminate": NoticeKind.TERMINATE,
    "stop": NoticeKind.STOP,
    "hibernate": NoticeKind.HIBERNATE,
}


def parse_time_unix(text: Any) -> float:
    """ISO 8601 as IMDS writes it (`2026-11-25T15:04:05Z`) -> unix time; naive means UTC."""
    if not isinstance(text, str):
        raise BadResponse(f"time is not a string: {text!r}")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadResponse(f"time is not ISO 8601: {text[:64]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    value = moment.timestamp()
    if not math.isfinite(value):
        raise BadResponse(f"time out of range: {text[:64]!r}")
    return value


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadResponse(f"not JSON: {body[:64]!r}") from None
    if not isinstance(data, dict):
        raise BadResponse(f"not a JSON object: {body[:64]!r}")
    return data


def parse_instance_action(body: bytes) -> PreemptionNotice:
    """`{"action": "terminate"|"stop"|"hibernate", "time": "...Z"}` -> a binding notice."""
    data = _json_object(body)
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise BadResponse(f"no action in {body[:128]!r}")
    deadline_unix = parse_time_unix(data.get("time"))
    # An action this code does not know still means the instance is going away.
    kind = ACTIONS.get(action.lower(), NoticeKind.TERMINATE)
    return PreemptionNotice(
        provider=Provider.AWS,
        kind=kind,
        deadline_unix=deadline_unix,
        detail=f"spot instance-action {action} at {data['time']}",
        event_id=f"aws:instance-action:{action}:{data['time']}",
    )


def parse_rebalance(body: bytes) -> PreemptionNotice:
    """`{"noticeTime": "...Z"}` -> an advisory notice without a deadline."""
    data = _json_object(body)
    notice_time = data.get("noticeTime")
    parse_time_unix(notice_time)
    return PreemptionNotice(
        provider=Provider.AWS,
        kind=NoticeKind.REBALANCE,
        deadline_unix=None,
        detail=f"rebalance recommendation since {notice_time}",
        event_id=f"aws:rebalance:{notice_time}",
        advisory=True,
    )


def parse_token(body: bytes) -> str:
    try:
        token = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadResponse("token is not ASCII") from None
    if not token or len(token) > MAX_TOKEN_BYTES or not token.isprintable():
        raise BadResponse(f"not a token: {body[:32]!r}")
    return token


class AwsWatcher(PollingWatcher):
    """Polls IMDSv2; `now_unix` also ages the cached session token."""

    provider = Provider.AWS

    def __init__(self, base_url: str, *, timeout_s: float, token_ttl_s: int = TOKEN_TTL_S) -> None:
        super().__init__(base_url, timeout_s=timeout_s, log=logger)
        self._token_ttl_s = token_ttl_s
        self._token: str | None = None
        self._token_expires_unix = 0.0

    def _check(self, now_unix: float) -> PreemptionNotice | None:
        action = self._get(INSTANCE_ACTION_PATH, now_unix)
        if action.status == 200:
            return parsed(INSTANCE_ACTION_PATH, lambda: parse_instance_action(action.body))
        if action.status != 404:
            raise unexpected_status(INSTANCE_ACTION_PATH, action)
        rebalance = self._get(REBALANCE_PATH, now_unix)
        if rebalance.status == 200:
            return parsed(REBALANCE_PATH, lambda: parse_rebalance(rebalance.body))
        if rebalance.status != 404:
            raise unexpected_status(REBALANCE_PATH, rebalance)
        return None

    def _get(self, path: str, now_unix: float) -> Response:
        response = self._request("GET", path, headers={TOKEN_HEADER: self._session(now_unix)})
        if response.status == 401:
            # The token expired or IMDS restarted: fetch a new one, once.
            self._token = None
            response = self._request("GET", path, headers={TOKEN_HEADER: self._session(now_unix)})
        return response

    def _session(self, now_unix: float) -> str:
        if self._token is not None and now_unix < self._token_expires_unix:
            return self._token
        self._token = None
        try:
            response = self._request(
                "PUT", TOKEN_PATH, headers={TOKEN_TTL_HEADER: str(self._token_ttl_s)}
            )
        except MetadataError as exc:
            if exc.kind != "timeout":
                raise
            # The classic cause: IMDS answers a PUT only within its hop limit (default 1),
            # so a container behind a bridge never sees the reply.
            raise MetadataError(
                exc.kind,
                exc.path,
                f"{exc.detail}; inside a container the instance's metadata hop limit "
                "may need to be 2 (aws ec2 modify-instance-metadata-options)",
            ) from exc
        if response.status != 200:
            raise MetadataError(
                f"http-{response.status}",
                TOKEN_PATH,
                f"HTTP {response.status} for the IMDSv2 token",
            )
        self._token = parsed(TOKEN_PATH, lambda: parse_token(response.body))
        self._token_expires_unix = now_unix + max(
            self._token_ttl_s - TOKEN_REFRESH_MARGIN_S, self._token_ttl_s / 2
        )
        return self._token
