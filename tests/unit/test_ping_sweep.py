"""The Engine.IO server's sweep for unanswered pings (ConformantServer._service_task) on a
fast-forwarded event loop (looptime): one pass over every socket each ping_timeout / 2, not one
wake-up per socket (python-engineio's paced its checks ping_timeout / N apart: at 10,000 idle
connections a busy loop of tasks and timers that cost 97% of a core)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gamegw.server.transport.eio import ConformantServer, ConformantSocket

pytestmark = pytest.mark.looptime(start=0)
PING_TIMEOUT_S = 4.0


class Watched(ConformantSocket):
    """A real socket whose ping-timeout checks are recorded (loop time of each)."""

    checked: list[float]

    async def check_ping_timeout(self) -> Any:
        self.checked.append(asyncio.get_running_loop().time())
        return await super().check_ping_timeout()


async def test_one_pass_over_every_socket_each_half_ping_timeout() -> None:
    server = ConformantServer(async_mode="aiohttp", ping_interval=10, ping_timeout=PING_TIMEOUT_S)
    sockets = []
    for i in range(2500):  # more than one SWEEP_BATCH: the pass yields in between, at the same loop time
        s = Watched(server, f"s{i}")
        s.checked = []
        s.connected = True
        server.sockets[s.sid] = s
        sockets.append(s)
    dead = sockets[7]
    dead.last_ping = time.time() - 2 * PING_TIMEOUT_S  # its ping went unanswered long ago
    task = asyncio.create_task(server._service_task())
    await asyncio.sleep(10 * PING_TIMEOUT_S / 2 + 0.1)  # ten passes
    server.service_task_event.set()
    await task

    passes = [PING_TIMEOUT_S / 2 * k for k in range(1, 11)]
    assert sockets[0].checked == pytest.approx(passes)
    assert all(s.checked == sockets[0].checked for s in sockets if s is not dead)
    assert set(dead.checked) == {PING_TIMEOUT_S / 2}  # closed at the first pass (its CLOSE checks again)
    assert dead.closed and dead.sid not in server.sockets
    assert len(server.sockets) == 2499
