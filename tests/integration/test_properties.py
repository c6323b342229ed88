"""Property-based: arbitrary JSON thrown at every event over a real connection.

Whatever the payload, each event gets an ack, either ``{"ok": true, ...}`` with the event's
fields or an error ack whose code is one of the contract's, never ``internal``; the connection
stays up, and once the examples are over a new player can still join and move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, Player

Players = Callable[..., Awaitable[Player]]

ERROR_CODES = {"bad_request", "not_in_room", "room_full", "invalid_action", "rate_limited", "payload_too_large",
               "unavailable", "forbidden"}
OK_FIELDS = {
    "join": {"ok", "room", "seq", "members"},
    "leave": {"ok"},
    "move": {"ok", "seq"},
    "sync": {"ok", "events", "complete"},
    "state": {"ok", "seq", "state"},
    "refresh": {"ok", "exp"},
}
EVENTS = [*OK_FIELDS, "unknown", "", "connect", "disconnect", "connect_error", "session", "move "]

# 64-bit integers: in-process clients share python-socketio's packet codec (orjson) with the
# gateway, and it encodes no larger ones (the raw-socket tests in test_security.py send others)
integers = st.integers(min_value=-(2**63), max_value=2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | integers | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
rooms = st.sampled_from(["r", "s"]) | json_values
# payloads shaped like the events' own, so that the handlers are reached past the first check
arena_actions = st.fixed_dictionaries({"dir": st.sampled_from(["up", "left", "x"])})
shaped = st.fixed_dictionaries({}, optional={
    "room": rooms,
    "action": json_values | arena_actions,
    "after_seq": integers | json_values,
    "token": st.text() | json_values,
})
payloads = json_values | shaped


@pytest.fixture(params=["relay", "arena"])
async def player(request: pytest.FixtureRequest, gateway_factory: Callable[..., Awaitable[Gateway]],
                 players: Players) -> AsyncIterator[Player]:
    """One connection for all of a test's examples, in room ``r``, for each game. After them,
    the gateway must still take a new player who joins and moves."""
    gw = await gateway_factory(game=request.param, max_events_per_s=0)
    p = await players(gw.url, gw.token("fuzzer"))
    assert (await p.call("join", {"room": "r"}))["ok"] is True
    yield p
    after = await players(gw.url, gw.token("after"))
    assert (await after.call("join", {"room": "r"}))["ok"] is True
    move = {"still": "up"} if request.param == "relay" else {"dir": "right"}
    ack = await after.call("move", {"room": "r", "action": move})
    assert ack["ok"] is True or ack["error"]["code"] == "invalid_action", ack  # arena: the cell may be taken


def assert_an_ack(event: str, ack: Any) -> None:
    assert isinstance(ack, dict), ack
    if ack.get("ok") is True:
        assert set(ack) == OK_FIELDS[event], ack
        return
    assert ack.get("ok") is False and set(ack) == {"ok", "error"}, ack
    assert ack["error"]["code"] in ERROR_CODES, ack
    assert isinstance(ack["error"]["message"], str), ack


@pytest.mark.parametrize("event", EVENTS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
async def test_any_json_at_any_event_gets_an_ack(player: Player, event: str, payload: Any) -> None:
    ack = await player.call(event, payload)
    assert_an_ack(event, ack)
    assert player.client.connected
