"""A python-socketio client that leaves is a leave, not a drop, with the documented handler.

python-socketio's ``AsyncClient.disconnect()`` queues Socket.IO's DISCONNECT packet and closes
the websocket in the same step, before its writer task has sent it, so that the gateway sees a
dropped transport: the room hears ``player_disconnected`` and the session waits ``grace_s``.
docs/protocol.md ("Leaving from python-socketio") tells Python clients to give the writer one
turn of the event loop in an async ``disconnect`` handler on ``/game``; this is that client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import socketio

from gamegw.server.app import PARTS
from tests.conftest import Gateway, Player, eventually


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"], ["polling"]],
                         ids=["websocket", "polling+upgrade", "polling"])
async def test_the_documented_python_client_leaves(gateway: Gateway, players: Callable[..., Awaitable[Player]],
                                                   transports: list[str]) -> None:
    bob = await players(gateway.url, gateway.token("bob"))
    assert (await bob.call("join", {"room": "r"}))["ok"] is True

    sio = socketio.AsyncClient()  # reconnection on, as a game client has it

    @sio.on("disconnect", namespace="/game")
    async def on_disconnect(reason: str) -> None:
        await sio.sleep(0)  # the documented line

    try:
        await sio.connect(gateway.url, namespaces=["/game"], auth={"token": gateway.token("alice")},
                          transports=transports, wait_timeout=5)
        assert (await sio.call("join", {"room": "r"}, namespace="/game", timeout=5))["ok"] is True
        await bob.wait_for("player_joined")
        await sio.disconnect()
    finally:
        await sio.shutdown()

    [left] = await bob.wait_for("player_left")
    assert left == {"room": "r", "user": "alice", "reason": "left"}
    sessions = gateway.app[PARTS].gateway.sessions

    async def gone() -> bool:
        return await sessions.of_user("alice") == []

    await eventually(gone)
    # bob's own move comes back after anything the room had sent him: no player_disconnected
    assert (await bob.call("move", {"room": "r", "action": {}}))["ok"] is True
    await bob.wait_for("move")
    assert "player_disconnected" not in bob.events
