"""Engine.IO as the protocol says (server/transport/eio.py), one rule per test, on a real gateway.

Each test is a rule of the Engine.IO v4 protocol that python-engineio 4.x broke and the
maintainers' conformance suite checks (tests/integration/test_conformance.py runs the suite
itself); here each is pinned down on its own, with the exact answer the protocol expects.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from gamegw.server.app import PARTS
from tests.conftest import Gateway, eventually
from tests.rawclient import CLOSE, RawPolling, RawWebSocket

GatewayFactory = Callable[..., Awaitable[Gateway]]


async def _true(value: bool) -> bool:
    return value
SUITE = {"ping_interval_s": 0.3, "ping_timeout_s": 0.2}


async def test_the_handshake_advertises_fractional_ping_figures_exactly(gateway_factory: GatewayFactory) -> None:
    """python-engineio advertised int(0.3) * 1000 = 0 ms: an official client then expects a
    ping within pingTimeout and drops."""
    gw = await gateway_factory(ping_interval_s=0.3, ping_timeout_s=1.15)
    async with aiohttp.ClientSession() as http:
        opened = await RawPolling(http, gw.url).open()
    assert (opened["pingInterval"], opened["pingTimeout"]) == (300, 1150)
    ws = await RawWebSocket.connect(gw.url)
    try:
        _, payload = await ws.recv()
        handshake = json.loads(payload.decode()[1:])
        assert (handshake["pingInterval"], handshake["pingTimeout"]) == (300, 1150)
    finally:
        ws.close()


@pytest.mark.parametrize(("method", "query"), [
    ("GET", "EIO=4"),  # no transport: python-engineio took polling for granted
    ("POST", "EIO=4"),
    ("PUT", "EIO=4&transport=polling"),  # aiohttp answered 405
    ("DELETE", "EIO=4&transport=polling"),
])
async def test_a_request_without_transport_or_with_another_method_is_a_bad_request(
        gateway_factory: GatewayFactory, method: str, query: str) -> None:
    gw = await gateway_factory()
    async with aiohttp.ClientSession() as http, http.request(method, f"{gw.url}/socket.io/?{query}") as resp:
        assert resp.status == 400


async def test_a_polling_post_is_answered_ok(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with aiohttp.ClientSession() as http:
        session = RawPolling(http, gw.url)
        await session.open()
        async with http.post(session.endpoint, data=b"3") as resp:
            assert (resp.status, await resp.text()) == (200, "ok")


async def test_a_body_that_is_not_engineio_closes_the_session_at_once(gateway_factory: GatewayFactory) -> None:
    """The client is told 400 and the next request gets 400 (the session was kept until its
    CLOSE was fetched: the next GET got it, with 200); a GET pending then gets CLOSE."""
    gw = await gateway_factory()
    async with aiohttp.ClientSession() as http:
        session = RawPolling(http, gw.url)
        await session.open()
        assert await session.post("abc") == 400
        assert (await session.poll())[0] == 400
        await session.open()
        pending = asyncio.create_task(session.poll())
        await asyncio.sleep(0.1)
        assert await session.post("abc") == 400
        assert await asyncio.wait_for(pending, 1) == (200, ["1"])
        assert (await session.poll())[0] == 400


async def test_a_second_pending_poll_closes_the_session(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with aiohttp.ClientSession() as http:
        session = RawPolling(http, gw.url)
        await session.open()
        first = asyncio.create_task(session.poll())
        await asyncio.sleep(0.1)
        second = await asyncio.wait_for(session.poll(), 1)
        assert await asyncio.wait_for(first, 1) == (200, ["1"])
        assert second[0] == 400
        assert (await session.poll())[0] == 400
    assert gw.app  # the gateway is still serving: the close was the session's, not the server's


async def test_a_silent_polling_client_is_closed_at_the_ping_timeout(gateway_factory: GatewayFactory) -> None:
    """The GET pending when the pong is overdue gets CLOSE right then, not when the service task
    comes round or the GET itself times out (ping interval + timeout later)."""
    gw = await gateway_factory(**SUITE)
    async with aiohttp.ClientSession() as http:
        session = RawPolling(http, gw.url)
        await session.open()
        assert await session.poll() == (200, ["2"])  # the ping, which is not answered
        pinged = time.monotonic()
        assert await asyncio.wait_for(session.poll(), 2) == (200, ["1"])
        assert time.monotonic() - pinged < SUITE["ping_timeout_s"] + 0.1
        assert (await session.poll())[0] == 400


async def test_a_polling_client_that_pongs_stays(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**SUITE)
    async with aiohttp.ClientSession() as http:
        session = RawPolling(http, gw.url)
        await session.open()
        for _ in range(4):
            assert await session.poll() == (200, ["2"])
            assert await session.post("3") == 200


async def upgrade(gw: Gateway, http: aiohttp.ClientSession, *, poll_pending: bool) -> tuple[RawPolling, RawWebSocket]:
    """A polling session upgraded to websocket, every step as the protocol says: the probe is
    answered, a poll pending at the probe ends with a NOOP, a GET after it gets one too."""
    session = RawPolling(http, gw.url)
    await session.open()
    pending = asyncio.create_task(session.poll()) if poll_pending else None
    await asyncio.sleep(0.05)
    ws = await RawWebSocket.connect(gw.url, path=f"/socket.io/?EIO=4&transport=websocket&sid={session.sid}")
    ws.send_text("2probe")
    assert await ws.recv() == (0x1, b"3probe")
    if pending is not None:
        assert await asyncio.wait_for(pending, 1) == (200, ["6"])
    assert await session.poll() == (200, ["6"])
    ws.send_text("5")
    return session, ws


@pytest.mark.parametrize("poll_pending", [False, True], ids=["no-poll-pending", "poll-pending"])
async def test_after_an_upgrade_no_noop_reaches_the_websocket(gateway_factory: GatewayFactory,
                                                              poll_pending: bool) -> None:
    """python-engineio queued a NOOP at the probe for a pending poll; with none pending, the GET
    after the probe got a NOOP of its own, and the queued one went out on the websocket."""
    gw = await gateway_factory(**SUITE)
    async with aiohttp.ClientSession() as http:
        session, ws = await upgrade(gw, http, poll_pending=poll_pending)
        try:
            assert await ws.recv(1) == (0x1, b"2")  # the next ping, and nothing before it
            assert (await session.poll())[0] == 400  # HTTP is refused once upgraded
        finally:
            ws.close()


async def test_an_idle_websocket_that_answers_its_pings_stays_open(gateway_factory: GatewayFactory) -> None:
    """Pings go straight onto an idle websocket, not through the session's queue, so the queue
    may stay empty for good: the writer task waits for it with no timeout of its own
    (python-engineio's gave up after ping interval + timeout without a packet, and closed the
    connection). Five rounds of interval + timeout: a ping each interval, nothing else, no close."""
    gw = await gateway_factory(**SUITE)
    ws = await RawWebSocket.connect(gw.url)
    try:
        await ws.join_game(gw.token("alice"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        pinged = []
        while loop.time() - started < 5 * (0.3 + 0.2):
            assert await ws.recv(1) == (0x1, b"2")
            pinged.append(loop.time() - started)
            ws.send_text("3")
        assert len(pinged) >= 5
    finally:
        ws.close()


async def test_a_second_websocket_for_an_upgraded_session_is_opened_and_closed(
        gateway_factory: GatewayFactory) -> None:
    """As Node's engine.io does (python-engineio answered HTTP 400, an error for the client);
    the first websocket goes on."""
    gw = await gateway_factory(ping_interval_s=5, ping_timeout_s=5)
    async with aiohttp.ClientSession() as http:
        session, ws = await upgrade(gw, http, poll_pending=False)
        await asyncio.sleep(0.05)
        try:
            second = await RawWebSocket.connect(gw.url,
                                                path=f"/socket.io/?EIO=4&transport=websocket&sid={session.sid}")
            try:
                opcode, _ = await second.recv(1)
                assert opcode == CLOSE
            finally:
                second.close()
            assert session.sid in gw.app[PARTS].sio.eio.sockets
            ws.send_text("1")  # the first is still the session's transport: its CLOSE is heard
            await ws.closed_with(2)
            # gone once the server has waited CLOSE_WAIT_S for this client's close frame (it sends none)
            await eventually(lambda: _true(session.sid not in gw.app[PARTS].sio.eio.sockets), timeout=1)
        finally:
            ws.close()


@pytest.mark.parametrize("packet", [
    "4abc",  # an unknown Socket.IO packet type
    "42/game,{}",  # an EVENT whose payload is not an array
    '42/game,abc["move",1]',  # an ack id that is not a number
], ids=["unknown-type", "payload-not-array", "bad-ack-id"])
async def test_a_malformed_socketio_packet_on_game_closes_the_connection(gateway_factory: GatewayFactory,
                                                                        packet: str) -> None:
    """The Socket.IO suite's three "invalid format" tests, on /game (the suite sends them on
    "/", which the gateway does not serve): the connection is told 4400 and closed."""
    gw = await gateway_factory()
    ws = await RawWebSocket.connect(gw.url)
    try:
        await ws.join_game(gw.token("alice"))
        ws.send_text(packet)
        texts, _ = await ws.closed_with(3)
        reasons = [json.loads(t[len("42/game,"):])[1] for t in texts if t.startswith('42/game,["disconnect_reason"')]
        assert [r["code"] for r in reasons] == [4400], texts
    finally:
        ws.close()


async def test_an_idle_websocket_connection_holds_one_task_and_no_timer(gateway_factory: GatewayFactory) -> None:
    """A websocket that writes straight to its TCP transport reads its frames in the task aiohttp
    runs its request in, and nothing else waits for it: python-engineio added a writer task, a
    task and a timer for every read, token expiry two timers per connection, and the handshake's
    deadline stayed armed after the handshake (at 10,000 idle players about 6 KB each of their
    34, and a task switch per frame). aiohttp's two tasks per connection are all that is left."""
    gw = await gateway_factory()
    loop = asyncio.get_running_loop()

    def tasks_and_timers() -> tuple[int, int]:
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        return len(asyncio.all_tasks()), sum(1 for timer in scheduled if not timer.cancelled())

    first = await RawWebSocket.connect(gw.url)  # the server's own tasks start with the first
    clients = [first]
    try:
        await first.join_game(gw.token("first"))
        await asyncio.sleep(0.2)
        before = tasks_and_timers()
        for i in range(12):
            clients.append(await RawWebSocket.connect(gw.url))
            await clients[-1].join_game(gw.token(f"idle-{i}"))
        await asyncio.sleep(0.2)
        after = tasks_and_timers()
        assert (after[0] - before[0], after[1] - before[1]) == (2 * 12, 0)
    finally:
        for ws in clients:
            ws.close()


async def test_a_websocket_that_stops_answering_pings_is_closed(gateway_factory: GatewayFactory) -> None:
    """No timer waits on each read (python-engineio's reader gave up after ping interval +
    timeout): the server's sweep of unanswered pings closes the session and its websocket, with a
    close frame, as Node's engine.io does."""
    gw = await gateway_factory(**SUITE)
    ws = await RawWebSocket.connect(gw.url)
    try:
        await ws.join_game(gw.token("alice"))
        sid = next(iter(gw.app[PARTS].sio.eio.sockets))
        started = time.monotonic()
        texts, code = await ws.closed_with(5)  # reads, and answers nothing
        waited = time.monotonic() - started
        assert (set(texts), code) == ({"2"}, 1000)
        assert waited < SUITE["ping_interval_s"] + SUITE["ping_timeout_s"] + 0.15  # the contract's bound
        assert sid not in gw.app[PARTS].sio.eio.sockets
    finally:
        ws.close()
