"""The Engine.IO server's pings (ConformantServer._ping_loop) on a fast-forwarded event loop
(looptime): every socket is pinged ``ping_interval`` after its last pong, from one task for the
whole server. python-engineio started a task per socket and per ping that slept the interval,
and the ping then woke the socket's writer task through its queue: at 10,000 idle connections
those tasks and timers were a fifth of the gateway's idle CPU each (py-spy)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engineio import packet

from gamegw.server.transport.eio import ConformantServer, ConformantSocket
from gamegw.server.transport.websocket import text_frame

pytestmark = pytest.mark.looptime(start=0)
INTERVAL_S = 10.0
TIMEOUT_S = 4.0


class Watched(ConformantSocket):
    """A real socket whose pings are recorded (loop time of each)."""

    pinged: list[float]

    async def ping(self) -> None:
        self.pinged.append(asyncio.get_running_loop().time())
        await super().ping()


def queued_pings(s: ConformantSocket) -> int:
    return sum(1 for p in list(s.queue._queue) if p is not None and p.packet_type == packet.PING)


async def pong(s: ConformantSocket) -> None:
    await s.receive(packet.Packet(packet.PONG))


async def test_every_socket_is_pinged_an_interval_after_its_pong_from_one_task() -> None:
    loop = asyncio.get_running_loop()
    created: list[Any] = []
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Future[Any]:
        created.append(getattr(coro, "__qualname__", coro))
        return factory(loop, coro, **kw) if factory else asyncio.Task(coro, loop=loop, **kw)

    server = ConformantServer(async_mode="aiohttp", ping_interval=INTERVAL_S, ping_timeout=TIMEOUT_S)
    written: list[tuple[str, bytes]] = []
    direct = {"s1", "s3"}  # an idle websocket the server can write to: the ping goes straight there

    def write_frame(sid: str, frame: bytes) -> bool:
        if sid not in direct:
            return False
        written.append((sid, frame))
        return True

    server.write_frame = write_frame
    sockets: list[Watched] = []
    loop.set_task_factory(counting)
    try:
        for i in range(2500):  # more than one SWEEP_BATCH: the pings yield in between, at the same loop time
            s = Watched(server, f"s{i}")
            s.pinged = []
            s.connected = s.upgraded = True
            server.sockets[s.sid] = s
            s.schedule_ping()  # as the handshake does, at loop time 0
            sockets.append(s)
        await asyncio.sleep(INTERVAL_S + 0.5)
        assert all(s.pinged == [INTERVAL_S] for s in sockets)
        assert written == [("s1", text_frame(b"2")), ("s3", text_frame(b"2"))]
        assert [queued_pings(s) for s in sockets[:5]] == [1, 0, 1, 0, 1]

        for s in sockets[:2000]:  # the others do not answer
            await pong(s)  # at loop time 10.5: the next ping at 20.5
        sockets[0].schedule_ping()  # a second pong before the ping: no second ping
        await asyncio.sleep(INTERVAL_S + 0.5)
        assert all(s.pinged == [INTERVAL_S, 2 * INTERVAL_S + 0.5] for s in sockets[:2000])
        assert all(s.pinged == [INTERVAL_S] for s in sockets[2000:])  # no pong, no next ping

        sockets[5].closing = True  # closing when its ping is due: none is sent
        await pong(sockets[5])  # at loop time 21
        await asyncio.sleep(INTERVAL_S + 0.5)
        assert sockets[5].pinged[-1] == 3 * INTERVAL_S + 1 and queued_pings(sockets[5]) == 2
    finally:
        loop.set_task_factory(factory)
        await server.shutdown()
    # one task for every socket's pings, one for their deadlines (those that went unanswered)
    assert created == ["ConformantServer._ping_loop", "ConformantServer._pong_loop"]


async def test_a_polling_socket_that_misses_its_pong_is_closed_at_the_ping_timeout() -> None:
    server = ConformantServer(async_mode="aiohttp", ping_interval=INTERVAL_S, ping_timeout=TIMEOUT_S)
    answers, misses = ConformantSocket(server, "answers"), ConformantSocket(server, "misses")
    closed_at: dict[str, float] = {}

    async def disconnect(sid: str, reason: Any) -> None:
        closed_at[sid] = asyncio.get_running_loop().time()

    server.on("disconnect", disconnect)
    try:
        for s in (answers, misses):
            s.connected = True  # long-polling: not upgraded
            server.sockets[s.sid] = s
            s.schedule_ping()
        await asyncio.sleep(INTERVAL_S + 1)
        assert queued_pings(answers) == queued_pings(misses) == 1
        await pong(answers)
        await asyncio.sleep(TIMEOUT_S)
        assert closed_at == {"misses": INTERVAL_S + TIMEOUT_S}
        assert misses.closed and not answers.closed
    finally:
        await server.shutdown()


async def test_a_websocket_that_misses_its_pong_is_closed_at_the_ping_timeout() -> None:
    """The deadline of a ping written straight to a websocket: no timer on its reads any more,
    and the server's sweep passes only every ping_timeout / 2; one queue of deadlines, in ping
    order, closes it ping_timeout after the ping, as the protocol says."""
    server = ConformantServer(async_mode="aiohttp", ping_interval=INTERVAL_S, ping_timeout=TIMEOUT_S)
    server.write_frame = lambda sid, frame: True  # every ping goes straight to the websocket
    sockets = {sid: ConformantSocket(server, sid) for sid in ("answers", "misses", "late")}
    closed_at: dict[str, float] = {}

    async def disconnect(sid: str, reason: Any) -> None:
        closed_at[sid] = asyncio.get_running_loop().time()

    server.on("disconnect", disconnect)
    try:
        for s in sockets.values():
            s.connected = s.upgraded = True
            server.sockets[s.sid] = s
            s.schedule_ping()
        await asyncio.sleep(INTERVAL_S + 1)
        await pong(sockets["answers"])
        await asyncio.sleep(TIMEOUT_S - 1.5)
        await pong(sockets["late"])  # within the timeout, if only just
        await asyncio.sleep(1)
        assert closed_at == {"misses": INTERVAL_S + TIMEOUT_S}
        assert [s.closed for s in sockets.values()] == [False, True, False]
    finally:
        await server.shutdown()
