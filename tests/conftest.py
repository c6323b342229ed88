"""Shared fixtures: real gateways on free ports, real Socket.IO clients, a real redis-server.

Mock only time and the outside world. A gateway here is the real aiohttp app from
``create_app`` served on 127.0.0.1:0 inside the test's event loop; clients are real
python-socketio ``AsyncClient`` instances (see :class:`Player`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

from gamegw.server.app import create_app, server_options
from gamegw.server.auth.tokens import mint
from gamegw.server.config import Settings, load_settings

from .redis_servers import TOPOLOGIES, TOPOLOGY, RedisClusterServer, RedisServer, free_port
from .sentinel import SentinelSet

__all__ = ["RedisServer", "free_port"]  # imported from here by the tests

TEST_SECRET = "test-secret-0123456789-0123456789-abcdef"


REPORT = pytest.StashKey[list[str]]()


def report_line(config: pytest.Config, line: str) -> None:
    """A figure worth reading in every run (conformance): printed in the terminal summary."""
    config.stash.setdefault(REPORT, []).append(line)


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report a test's measured figure in the terminal summary (a passing test's print is hidden)."""
    def report(line: str) -> None:
        report_line(request.config, f"{request.node.name}: {line.strip()}")

    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)


def make_settings(**overrides: Any) -> Settings:
    environ = {"GAMEGW_JWT_SECRET": TEST_SECRET, "GAMEGW_INSTANCE_ID": "test-1"}
    return load_settings(environ, None, {"port": 0, **overrides})


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | RedisClusterServer | SentinelSet]:
    """The tests' Redis, by ``GAMEGW_TEST_TOPOLOGY`` (:data:`.redis_servers.TOPOLOGIES`): one
    redis-server (``single``, the default), a master with a replica and three sentinels
    (``sentinel``: ``url`` is the ``redis+sentinel://`` URL, ``port`` the master's), or a
    three-master Redis Cluster (``cluster``: ``url`` is the ``redis+cluster://`` URL)."""
    folder = tmp_path_factory.mktemp("redis")
    server: RedisServer | RedisClusterServer | SentinelSet
    if TOPOLOGY == "sentinel":
        server = SentinelSet(folder)
    elif TOPOLOGY == "cluster":
        server = RedisClusterServer(folder)
    elif TOPOLOGY == "single":
        server = RedisServer(folder)
    else:
        raise pytest.UsageError(f"GAMEGW_TEST_TOPOLOGY={TOPOLOGY!r}: use one of {', '.join(TOPOLOGIES)}")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of the test's own: tests share one redis-server without seeing each other."""
    return "t" + uuid.uuid4().hex[:10]


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
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1,
                           **server_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Gateway(f"http://127.0.0.1:{port}", settings, app, runner)


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def factory(*, clock: Callable[[], float] | None = None, **overrides: Any) -> Gateway:
        gw = await start_gateway(make_settings(**overrides), **({"clock": clock} if clock else {}))
        started.append(gw)
        return gw

    yield factory
    for gw in reversed(started):
        await gw.aclose()


@pytest.fixture
async def cluster_factory(redis_server: RedisServer, redis_prefix: str
                          ) -> AsyncIterator[Callable[..., Awaitable[list[Gateway]]]]:
    """``await cluster_factory(n, **settings)``: n in-process gateways sharing one Redis (``clock=``:
    the clock they all read)."""
    started: list[Gateway] = []

    async def factory(n: int, *, clock: Callable[[], float] | None = None, **overrides: Any) -> list[Gateway]:
        made = []
        for _ in range(n):
            iid = f"inst-{len(started) + 1}"
            settings = load_settings({"GAMEGW_JWT_SECRET": TEST_SECRET}, None, {
                "port": 0, "instance_id": iid, "redis_url": redis_server.url, "redis_prefix": redis_prefix,
                "heartbeat_interval_s": 0.2, "heartbeat_ttl_s": 1.0, **overrides})
            gw = await start_gateway(settings, **({"clock": clock} if clock else {}))
            started.append(gw)
            made.append(gw)
        return made

    yield factory
    for gw in reversed(started):
        await gw.aclose()


class GatewayProcess:
    """``gamectl serve`` in a process of its own, for crashes (SIGKILL) and restarts."""

    def __init__(self, env: dict[str, str], port: int, instance_id: str) -> None:
        self.port = port
        self.instance_id = instance_id
        self.url = f"http://127.0.0.1:{port}"
        gamectl = str(Path(sys.executable).with_name("gamectl"))
        self.proc = subprocess.Popen([gamectl, "serve", "--port", str(port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"gateway exited: {err}")
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway never became ready")
                await asyncio.sleep(0.1)

    def kill(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


def process_env(instance_id: str, **variables: str) -> dict[str, str]:
    """The environment of a ``gamectl serve`` process: no GAMEGW_ variable of ours, the test
    key, ``instance_id``, then ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    env.update({"GAMEGW_JWT_SECRET": TEST_SECRET, "GAMEGW_INSTANCE_ID": instance_id, **variables})
    return env


@pytest.fixture
async def process_factory(redis_server: RedisServer, redis_prefix: str
                          ) -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    async def factory(instance_id: str, **env_overrides: str) -> GatewayProcess:
        env = process_env(instance_id, **{
            "GAMEGW_REDIS_URL": redis_server.url, "GAMEGW_REDIS_PREFIX": redis_prefix,
            "GAMEGW_HEARTBEAT_INTERVAL_S": "0.2", "GAMEGW_HEARTBEAT_TTL_S": "1.0", "GAMEGW_LOG_LEVEL": "warning",
            **env_overrides})
        proc = GatewayProcess(env, free_port(), instance_id)
        started.append(proc)
        await proc.ready()
        return proc

    yield factory
    for proc in started:
        proc.close()


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

        async def leaving(*_: Any) -> None:
            await client.sleep(0)  # disconnect() writes its packet first: a leave, not a drop (docs/protocol.md)

        client.on("*", record, namespace="/game")
        client.on("disconnect", leaving, namespace="/game")
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



_IDLE_LOOP: list[asyncio.AbstractEventLoop] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """pytest-asyncio asks ``asyncio.get_event_loop()`` for the loop to put back after a test;
    with none set, Python 3.11 makes a new one each time, which nobody closes: a ResourceWarning
    (two unclosed sockets and a loop) in whichever test the garbage collector finds it, an error
    with warnings as errors. One idle loop, set for the session and closed at its end, is what
    it finds instead."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _IDLE_LOOP.append(loop)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for loop in _IDLE_LOOP:
        asyncio.set_event_loop(None)
        loop.close()

