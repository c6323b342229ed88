"""Limits: events per connection and handshakes per address, each with its code and metric."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gamegw.server.app import PARTS
from tests.conftest import refusal


async def test_events_over_the_rate_get_rate_limited_acks(gateway_factory, players):
    gw = await gateway_factory(max_events_per_s=2, max_events_burst=5)
    p = await players(gw.url, gw.token("alice"))
    acks = [await p.call("join", {"room": "r"}) for _ in range(8)]
    assert [a["ok"] for a in acks[:5]] == [True] * 5
    assert all(a["error"]["code"] == "rate_limited" for a in acks[5:7])
    assert p.client.connected
    text = gw.app[PARTS].metrics.render().decode()
    assert 'gamegw_acks_total{event="join",result="rate_limited"}' in text


async def test_handshakes_over_the_rate_are_refused(gateway_factory, players):
    gw = await gateway_factory(max_connects_per_address_per_s=0.5, max_connects_per_address_burst=2)
    await players(gw.url, gw.token("a"))
    await players(gw.url, gw.token("b"))
    err = await refusal(gw.url, auth={"token": gw.token("c")})
    assert err["message"] == "rate_limited" and err["data"]["code"] == 4029
    assert 'gamegw_refusals_total{code="rate_limited"} 1.0' in gw.app[PARTS].metrics.render().decode()


async def test_a_transport_that_never_joins_the_namespace_is_closed(gateway_factory):
    gw = await gateway_factory(handshake_timeout_s=0.5)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
        assert (await ws.receive_str()).startswith("0")  # Engine.IO open; no "40/game" ever follows
        started = time.monotonic()
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "1":  # Engine.IO close packet
                break
        assert time.monotonic() - started < 2.0
        await ws.close()
