"""The pure parsers: on any bytes at all they return a result or raise BadResponse."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.preemption import aws, azure, gcp
from stalwart.preemption.model import NoticeKind, PreemptionNotice, Provider, most_urgent
from stalwart.preemption.transport import BadResponse

NOW = 1_800_000_000.0

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "instance_action": aws.parse_instance_action,
    "rebalance": aws.parse_rebalance,
    "token": aws.parse_token,
    "preempted": gcp.parse_preempted,
    "maintenance": gcp.parse_word,
    "events": lambda body: azure.parse_events(body, NOW, "vm"),
    "events_no_name": lambda body: azure.parse_events(body, NOW, None),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "action",
                    "time",
                    "noticeTime",
                    "Events",
                    "EventId",
                    "EventType",
                    "Resources",
                    "EventStatus",
                    "NotBefore",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=80, deadline=None)
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parsers_only_raise_bad_response(name: str, body: bytes) -> None:
    with contextlib.suppress(BadResponse):
        PARSERS[name](body)


def _notice(event_id: str, deadline: float | None, advisory: bool) -> PreemptionNotice:
    return PreemptionNotice(Provider.AZURE, NoticeKind.TERMINATE, deadline, "", event_id, advisory)


@given(
    st.lists(
        st.tuples(st.none() | st.floats(0, 1e10), st.booleans()),
        max_size=6,
    )
)
def test_most_urgent(specs: list[tuple[float | None, bool]]) -> None:
    notices = [_notice(str(i), deadline, advisory) for i, (deadline, advisory) in enumerate(specs)]
    chosen = most_urgent(notices)
    if not notices:
        assert chosen is None
        return
    assert chosen is not None
    binding = [n for n in notices if not n.advisory]
    pool = binding or notices
    assert chosen in pool
    known = [n.deadline_unix for n in pool if n.deadline_unix is not None]
    if known:
        assert chosen.deadline_unix == min(known)
