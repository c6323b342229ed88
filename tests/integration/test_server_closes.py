"""Server-side closes close (issue 12, finding 9): after ``disconnect_reason`` the server ends the
transport itself, within ``CLOSE_BOUND_S``, whatever the client does.

The client here is the one a stock client is not: it ignores the namespace DISCONNECT and
Engine.IO's CLOSE, answers every ping, keeps talking (websocket) or keeps polling (long-polling).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gamegw.server.app import PARTS
from gamegw.server.transport.manager import CLOSE_BOUND_S
from tests.conftest import Gateway, Player, eventually
from tests.rawclient import RawPolling, RawWebSocket, stubborn_until_cut

GatewayFactory = Callable[..., Awaitable[Gateway]]
Players = Callable[..., Awaitable[Player]]

# How the server is made to close alice's connection, and the code she must be told first
CASES = {
    "bad_packet": 4400,
    "kick": 4503,
    "revoke": 4500,
    "flood": 4029,
    "replaced": 4504,
    "expired": 4005,
}
SETTINGS: dict[str, Any] = {
    "ping_interval_s": 0.25, "ping_timeout_s": 2,  # pings keep coming, and the client answers them
    "max_events_per_s": 1, "max_events_burst": 1, "abuse_max_rate_limited": 2, "abuse_window_s": 10,
}


def transports_left(gw: Gateway, case: str = "") -> Callable[[], Awaitable[bool]]:
    """Whether only the stock client that replaced alice (if it did) still has a transport."""
    async def check() -> bool:
        return len(gw.app[PARTS].sio.eio.sockets) == (1 if case == "replaced" else 0)

    return check


async def close_alice(case: str, gw: Gateway, players: Players, send: Callable[[str], Awaitable[None]]) -> None:
    """Make the server close alice's /game connection, the way ``case`` says."""
    parts = gw.app[PARTS]
    if case == "bad_packet":
        await send('42/game,1["join",1e400]')
    elif case == "kick":
        assert (await parts.cluster.kick("alice", "cheating")).count == 1
    elif case == "revoke":
        assert (await parts.cluster.revoke("alice", None)).count == 1
    elif case == "flood":
        for ack_id in range(6):
            await send(f'42/game,{ack_id}["state",{{"room":"r"}}]')
    elif case == "replaced":
        await players(gw.url, gw.token("alice"))
    # "expired": the token runs out by itself


def alice_token(case: str, gw: Gateway) -> str:
    return gw.token("alice", ttl_s=2 if case == "expired" else 3600)


def reason_of(texts: list[str]) -> tuple[int, dict[str, Any]]:
    """Where the ``disconnect_reason`` is among the packets, and its payload."""
    [(index, payload)] = [(i, json.loads(t[len("42/game,"):])[1]) for i, t in enumerate(texts)
                          if t.startswith('42/game,["disconnect_reason"')]
    return index, payload


@pytest.mark.parametrize("case", CASES)
async def test_a_websocket_the_server_closes_is_gone_whatever_the_client_does(
        case: str, gateway_factory: GatewayFactory, players: Players) -> None:
    gw = await gateway_factory(**SETTINGS)
    ws = await RawWebSocket.connect(gw.url)
    await ws.join_game(alice_token(case, gw))

    async def send(text: str) -> None:
        ws.send_text(text)

    stubborn = asyncio.create_task(stubborn_until_cut(ws, timeout=8))
    await asyncio.sleep(0.6)  # a few pings answered first
    await close_alice(case, gw, players, send)
    seen = await stubborn
    index, payload = reason_of(seen.texts)
    assert payload["code"] == CASES[case], payload
    assert seen.texts[index + 1:] == ["41/game,"]  # the namespace DISCONNECT, then the close frame
    assert seen.close_code == 1000  # a close frame, not just a cut
    assert seen.ended_at is not None, "the server never ended the websocket"
    assert seen.ended_at - seen.reason_at < CLOSE_BOUND_S + 1.0, seen.ended_at - seen.reason_at
    await eventually(transports_left(gw, case), timeout=CLOSE_BOUND_S + 1.0)
    users = [conn.claims.user_id for conn in gw.app[PARTS].gateway.conns.values()]
    assert users == (["alice"] if case == "replaced" else [])  # the stock client that replaced her


@pytest.mark.parametrize("case", CASES)
async def test_a_polling_session_the_server_closes_is_gone_whatever_the_client_does(
        case: str, gateway_factory: GatewayFactory, players: Players) -> None:
    gw = await gateway_factory(**SETTINGS)
    async with aiohttp.ClientSession() as http:
        alice = RawPolling(http, gw.url)
        await alice.join_game(alice_token(case, gw))

        async def send(text: str) -> None:
            await alice.post(text)  # 400 once the flood has closed the session

        stubborn = asyncio.create_task(alice.stubborn_until_gone(timeout=8))
        await asyncio.sleep(0.6)
        await close_alice(case, gw, players, send)
        packets, reason_at, gone_at = await stubborn
    index, payload = reason_of(packets)
    assert payload["code"] == CASES[case], payload
    assert packets[index + 1:index + 3] == ["41/game,", "1"]
    assert gone_at is not None, "the polling session outlived the close"
    assert gone_at - reason_at < CLOSE_BOUND_S + 1.0, gone_at - reason_at
    await eventually(transports_left(gw, case), timeout=CLOSE_BOUND_S + 1.0)


async def test_a_polling_session_that_stops_polling_is_forgotten_within_the_bound(
        gateway_factory: GatewayFactory) -> None:
    """A client that does not fetch its CLOSE cannot be told; its session goes anyway."""
    gw = await gateway_factory(ping_interval_s=5, ping_timeout_s=5)
    parts = gw.app[PARTS]
    async with aiohttp.ClientSession() as http:
        alice = RawPolling(http, gw.url)
        await alice.join_game(gw.token("alice"))
        assert (await parts.cluster.kick("alice", "cheating")).count == 1
        await eventually(transports_left(gw), timeout=CLOSE_BOUND_S + 1.0)
        status, _ = await alice.poll()
    assert status == 400


async def test_nothing_a_client_sends_after_the_close_is_handled(gateway_factory: GatewayFactory) -> None:
    """Between the close and the client's fetching its CLOSE, a CONNECT must not open a new /game."""
    gw = await gateway_factory(ping_interval_s=5, ping_timeout_s=5)
    parts = gw.app[PARTS]
    async with aiohttp.ClientSession() as http:
        alice = RawPolling(http, gw.url)
        await alice.join_game(gw.token("alice"))
        assert (await parts.cluster.kick("alice", "cheating")).count == 1
        assert await alice.post("40/game," + json.dumps({"token": gw.token("alice")})) == 200
        assert await alice.post('42/game,1["join",{"room":"r"}]') == 200
        status, packets = await alice.poll()
        assert status == 200
        assert (await alice.poll())[0] == 400
    index, payload = reason_of(packets)
    assert payload["code"] == 4503
    assert packets[index:] == [packets[index], "41/game,", "1"]  # no CONNECT, no ack
    assert parts.gateway.conns == {} and await parts.registry.list() == []


async def test_a_polling_clients_close_ends_its_pending_poll_at_once(gateway_factory: GatewayFactory) -> None:
    """python-engineio left the GET hanging for ping interval + timeout (python-socketio's
    client waits for it: every disconnect over long-polling took 15 s)."""
    gw = await gateway_factory(ping_interval_s=10, ping_timeout_s=5)
    async with aiohttp.ClientSession() as http:
        alice = RawPolling(http, gw.url)
        await alice.join_game(gw.token("alice"))
        pending = asyncio.create_task(alice.poll())
        await asyncio.sleep(0.2)
        assert await alice.post("1") == 200  # Engine.IO CLOSE from the client
        # Engine.IO: the pending GET ends with a NOOP (the protocol's; python-engineio's CLOSE was ours)
        assert await asyncio.wait_for(pending, CLOSE_BOUND_S) == (200, ["6"])
        assert (await alice.poll())[0] == 400
    assert gw.app[PARTS].gateway.conns == {}
