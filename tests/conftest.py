"""Shared fixtures: real gateways on free ports, real Socket.IO clients, a real redis-server.

Mock only time and the outside world. A gateway here is the real aiohttp app from
``create_app`` served on 127.0.0.1:0 inside the test's event loop; clients are real
python-socketio ``AsyncClient`` instances (see :class:`Player`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio
from aiohttp import web

from server.app import create_app
from server.auth import mint
from server.config import Settings, load_settings

TEST_SECRET = "test-secret-0123456789-0123456789-abcdef"


def make_settings(**overrides: Any) -> Settings:
    environ = {"GAMEGW_JWT_SECRET": TEST_SECRET, "GAMEGW_INSTANCE_ID": "test-1"}
    return load_settings(environ, None, {"port": 0, **overrides})


@dataclass
class Gateway:
    url: str
    settings: Settings
    app: web.Application
    runner: web.AppRunner

    def token(self, user: str, **kw: Any) -> str:
        return mint(self.settings, user, **kw)

    async def aclose(self) -> None:
        await self.runner.cleanup()


async def start_gateway(settings: Settings, **parts: Any) -> Gateway:
    app = create_app(settings, **parts)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Gateway(f"http://127.0.0.1:{port}", settings, app, runner)


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def factory(**overrides: Any) -> Gateway:
        gw = await start_gateway(make_settings(**overrides))
        started.append(gw)
        return gw

    yield factory
    for gw in reversed(started):
        await gw.aclose()


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await gateway_factory()


@dataclass
class Player:
    """A real python-socketio client on /game that records every event it receives."""

    client: socketio.AsyncClient
    events: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, event: str, data: Any = None, timeout: float = 5) -> Any:
        return await self.client.call(event, data, namespace="/game", timeout=timeout)

    async def wait_for(self, event: str, count: int = 1, timeout: float = 5) -> list[Any]:
        async def enough() -> None:
            while len(self.events[event]) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.events[event]

    async def disconnect(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
        await self.client.shutdown()


@pytest.fixture
async def players() -> AsyncIterator[Callable[..., Awaitable[Player]]]:
    made: list[Player] = []

    async def connect(url: str, token: str | None = None, *, transports: list[str] | None = None,
                      auth: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                      query: str = "") -> Player:
        client = socketio.AsyncClient(reconnection=False)
        player = Player(client)

        def record(event: str, data: Any = None) -> None:
            player.events[event].append(data)
            player.arrived.set()

        client.on("*", record, namespace="/game")
        made.append(player)
        if auth is None:
            auth = {"token": token} if token is not None else None
        await client.connect(url + query, namespaces=["/game"], auth=auth, headers=headers or {},
                             transports=transports or ["websocket"], wait_timeout=5)
        return player

    yield connect
    for p in made:
        await p.disconnect()


async def refusal(url: str, *, transports: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    """Connect expecting a refusal; return the ``connect_error`` data {message, data}."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data), namespace="/game")
    try:
        await client.connect(url + kw.pop("query", ""), namespaces=["/game"], transports=transports or ["websocket"],
                             wait_timeout=5, **kw)
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await client.disconnect()
        raise AssertionError("the connection was accepted")
    finally:
        await client.shutdown()
    assert errors, "no connect_error was received"
    return dict(errors[0])
