"""``create_app(settings)``: wires the gateway's parts into one aiohttp application.

Everything is built here and handed down (inject, don't reach); tests pass their own registry
or room store. The app closes what it opened in reverse order on cleanup.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import socketio
from aiohttp import web

from . import jsoncodec, websocket
from .auth import Verifier
from .codes import SHUTDOWN
from .config import Settings
from .gateway import NAMESPACE, Gateway
from .http import routes
from .logs import log
from .manager import GameManager
from .metrics import Metrics
from .registry import MemoryRegistry, Registry
from .rooms import MemoryRoomStore, RoomStore
from .rules import make_rules

logger = logging.getLogger("gamegw.app")


@dataclass
class Parts:
    settings: Settings
    sio: socketio.AsyncServer
    gateway: Gateway
    registry: Registry
    rooms: RoomStore
    metrics: Metrics


PARTS = web.AppKey("gamegw_parts", Parts)


def origin_checker(settings: Settings) -> Callable[[str | None], bool]:
    """The CORS allowlist; patterns such as ``http://localhost:*`` are allowed in it."""
    allowed = settings.cors_allowed_origins

    def check(origin: str | None) -> bool:
        if origin is None:
            return True
        return any(origin == a or a == "*" or fnmatch.fnmatchcase(origin, a) for a in allowed)

    return check


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    rooms: RoomStore | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    metrics = Metrics()
    registry = registry or MemoryRegistry()
    rooms = rooms or MemoryRoomStore(make_rules(settings), log_size=settings.move_log_size,
                                     max_members=settings.max_room_members)
    manager = GameManager()
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=origin_checker(settings),
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        max_http_buffer_size=settings.max_message_bytes,
        http_compression=True,
        logger=False,
        engineio_logger=False,
        async_handlers=False,
        json=jsoncodec,
    )
    # Handle each connection's packets inline, in the order they arrived: a client's moves can
    # never be reordered, a client's own disconnect is never taken for a transport close, and
    # no task is created per message (the library's default costs CPU on the hot path).
    sio.eio.async_handlers = False
    websocket.install(sio.eio, compress=settings.websocket_compression)
    gateway = Gateway(settings, verifier=Verifier(settings), registry=registry, rooms=rooms, metrics=metrics,
                      clock=clock)
    sio.register_namespace(gateway)

    async def connected(sid: str, namespace: str) -> None:
        if namespace == NAMESPACE:
            await gateway.on_connected(sid)

    manager.on_connected = connected

    app = web.Application()
    app[PARTS] = Parts(settings, sio, gateway, registry, rooms, metrics)
    sio.attach(app)
    app.add_routes(routes(metrics=metrics, rooms=rooms, instance_id=settings.instance_id))

    async def on_startup(app: web.Application) -> None:
        log(logger, "start", instance=settings.instance_id, profile=settings.profile, game=settings.game,
            state="memory" if not settings.redis_url else "redis")

    async def on_shutdown(app: web.Application) -> None:
        log(logger, "drain", instance=settings.instance_id, connections=len(gateway.conns))
        for sid in list(gateway.conns):
            await gateway.close(sid, SHUTDOWN)

    async def on_cleanup(app: web.Application) -> None:
        await sio.shutdown()
        await rooms.aclose()
        await registry.aclose()
        log(logger, "stop", instance=settings.instance_id)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. uvloop when installed: it measurably speeds up the I/O path."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = asyncio.new_event_loop
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    app = create_app(settings)

    async def ready(app: web.Application) -> None:
        log(logger, "ready", instance=settings.instance_id, url=f"http://{settings.host}:{settings.port}")

    app.on_startup.append(ready)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None, loop=loop,
                handle_signals=True, shutdown_timeout=5)
