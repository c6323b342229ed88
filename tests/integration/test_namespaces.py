"""Only /game is served (issue 12, finding 2): any other namespace, ``/`` included, is refused in
Socket.IO v5's form and its transport closed; the per-address handshake limit counts every
Engine.IO handshake, joined or not."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import socketio

from gamegw.server.app import PARTS
from gamegw.server.transport.manager import CLOSE_BOUND_S
from tests.conftest import Gateway, Player, eventually, refusal
from tests.rawclient import RawPolling, RawWebSocket, stubborn_until_cut

GatewayFactory = Callable[..., Awaitable[Gateway]]
Players = Callable[..., Awaitable[Player]]

REFUSED = {"message": "invalid_namespace", "data": {"code": 4404, "reason": "only /game is served"}}
OTHERS = ["/", "/admin", "/foo"]


def connect_packet(namespace: str) -> str:
    return "40" if namespace == "/" else f"40{namespace},"


def refusal_packet(namespace: str) -> str:
    return ("44" if namespace == "/" else f"44{namespace},") + json.dumps(REFUSED, separators=(",", ":"))


def counts(gw: Gateway) -> tuple[int, int]:
    """(Engine.IO sessions, /game connections)."""
    parts = gw.app[PARTS]
    return len(parts.sio.eio.sockets), len(parts.gateway.conns)


def metric(gw: Gateway, name: str, **labels: str) -> float:
    return gw.app[PARTS].metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("namespace", OTHERS)
async def test_another_namespace_is_refused_and_its_websocket_closed(gateway_factory: GatewayFactory,
                                                                      namespace: str) -> None:
    gw = await gateway_factory(handshake_timeout_s=30, ping_interval_s=0.25, ping_timeout_s=2)
    ws = await RawWebSocket.connect(gw.url)
    assert (await ws.recv_text()).startswith("0{")
    ws.send_text(connect_packet(namespace))  # no token at all
    seen = await stubborn_until_cut(ws, timeout=5)  # and then it would hold the transport if it could
    assert seen.texts == [refusal_packet(namespace)]  # the refusal, then the close frame
    assert seen.close_code == 1000 and seen.ended_at is not None
    await eventually(lambda: _true(counts(gw) == (0, 0)), timeout=CLOSE_BOUND_S + 1)
    assert metric(gw, "gamegw_refusals_total", code="invalid_namespace") == 1


@pytest.mark.parametrize("namespace", OTHERS)
async def test_another_namespace_is_refused_and_its_polling_session_closed(gateway_factory: GatewayFactory,
                                                                           namespace: str) -> None:
    gw = await gateway_factory(handshake_timeout_s=30, ping_interval_s=0.25, ping_timeout_s=2)
    async with aiohttp.ClientSession() as http:
        raw = RawPolling(http, gw.url)
        await raw.open()
        assert await raw.post(connect_packet(namespace)) == 200
        packets, _, gone_at = await raw.stubborn_until_gone(timeout=5)
    assert packets[:2] == [refusal_packet(namespace), "1"]
    assert gone_at is not None
    assert counts(gw) == (0, 0)


async def test_a_stock_client_on_the_default_namespace_gets_the_refusal(gateway: Gateway) -> None:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data), namespace="/")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gateway.url, namespaces=["/"], auth={"token": gateway.token("alice")},
                             transports=["websocket"], wait_timeout=5)
    await client.shutdown()
    assert errors == [REFUSED]
    await eventually(lambda: _true(counts(gateway) == (0, 0)), timeout=CLOSE_BOUND_S + 1)


async def test_another_namespace_on_a_game_transport_closes_it_with_4400(gateway: Gateway,
                                                                          players: Players) -> None:
    """A stock client never asks for another namespace; one that does is told why it is closed."""
    ws = await RawWebSocket.connect(gateway.url)
    await ws.join_game(gateway.token("alice"))
    ws.send_text("40/admin,")
    seen = await stubborn_until_cut(ws, timeout=5)
    assert seen.texts[0] == refusal_packet("/admin")
    name, reason = json.loads(seen.texts[1][len("42/game,"):])
    assert (name, reason) == ("disconnect_reason", {"code": 4400, "reason": "bad_packet", "reconnect": True,
                                                    "message": "only /game is served"})
    assert seen.texts[2:] == ["41/game,"] and seen.close_code == 1000 and seen.ended_at is not None
    back = await players(gateway.url, gateway.token("alice"))  # a drop: the session waits in grace
    assert (await back.wait_for("session"))[0]["resumed"] is True


async def test_the_handshake_limit_counts_engineio_sessions_that_never_join(gateway_factory: GatewayFactory,
                                                                            players: Players) -> None:
    gw = await gateway_factory(max_connects_per_address_per_s=0.001, max_connects_per_address_burst=3,
                               handshake_timeout_s=30)
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # bare Engine.IO sessions: no CONNECT, no token
            await RawPolling(http, gw.url).open()
    assert metric(gw, "gamegw_limit_hits_total", limit="handshakes") == 2
    # the two over the limit are closed soon, not after handshake_timeout_s; the three others wait
    await eventually(lambda: _true(counts(gw) == (3, 0)), timeout=CLOSE_BOUND_S + 1)
    # and the address has no handshake left for a real player either
    err = await refusal(gw.url, auth={"token": gw.token("alice")})
    assert err == {"message": "rate_limited", "data": {"code": 4029, "reason": "too many connection attempts"}}


async def test_a_session_over_the_limit_is_told_at_its_connect(gateway_factory: GatewayFactory) -> None:
    """The Engine.IO open is counted; the client hears why at its CONNECT, over either transport."""
    gw = await gateway_factory(max_connects_per_address_per_s=0.001, max_connects_per_address_burst=1)
    assert (await refusal(gw.url, auth={"token": "x"}))["message"] == "token_invalid"  # the one handshake left
    for transport in ("polling", "websocket"):
        err = await refusal(gw.url, transports=[transport], auth={"token": gw.token("alice")})
        assert err["message"] == "rate_limited" and err["data"]["code"] == 4029
    assert metric(gw, "gamegw_refusals_total", code="rate_limited") == 2
    await eventually(lambda: _true(counts(gw) == (0, 0)), timeout=CLOSE_BOUND_S + 1)


async def test_each_further_connect_on_one_transport_takes_a_handshake(gateway_factory: GatewayFactory) -> None:
    """A stock client may retry its CONNECT on the same transport; a script may not do so freely."""
    gw = await gateway_factory(max_connects_per_address_per_s=0.001, max_connects_per_address_burst=2)
    ws = await RawWebSocket.connect(gw.url)  # the Engine.IO open takes the first handshake
    try:
        assert (await ws.recv_text()).startswith("0{")
        refusals = []
        for _ in range(3):
            ws.send_text('40/game,{"token":"x"}')
            refusals.append(json.loads((await ws.recv_text())[len("44/game,"):])["message"])
    finally:
        ws.close()
    assert refusals == ["token_invalid", "token_invalid", "rate_limited"]
    assert metric(gw, "gamegw_limit_hits_total", limit="handshakes") == 1


async def _true(value: bool) -> bool:
    return value
