"""``create_app(settings)``: wires the gateway's parts into one aiohttp application.

Everything is built here and handed down (inject, don't reach); tests pass their own registry
or room store. The app closes what it opened in reverse order on cleanup.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import socketio
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .auth.revocation import MemoryRevocations, RedisRevocations, Revocations
from .auth.tokens import Verifier
from .cluster.api import Cluster
from .cluster.bus import Bus, LocalBus, RedisBus
from .cluster.control import LocalCluster, RedisCluster
from .config import Settings
from .dashboard.feed import Feed, LocalFeed, RedisFeed
from .dashboard.routes import dashboard_routes
from .dashboard.watch import WatchedRegistry
from .gateway import NAMESPACE, Gateway
from .guard.guards import Guards, OtherNamespaces, origin_checker
from .guard.guards import install as install_guards
from .hooks.client import Hooks
from .http import admin_routes, health_routes, metrics_routes
from .logs import library_logger, log, quiet_bad_http
from .metrics import Metrics, Sampler
from .protocol import jsoncodec
from .protocol.codes import POLLING_UNAVAILABLE, SHUTDOWN
from .rules import make_rules
from .startup import check_redis, listen, redis_failure
from .state.clients import open_redis
from .state.redis_link import RedisLink
from .state.redis_url import parse_redis_url
from .state.registry import MemoryRegistry, Registry
from .state.registry_redis import RedisRegistry
from .state.rooms import MemoryRoomStore, RoomStore
from .state.rooms_redis import RedisRoomStore
from .state.sessions import MemorySessionStore, SessionStore
from .state.sessions_redis import RedisSessionStore
from .ticks import Ticker
from .transport import handoff, websocket
from .transport.eio import ConformantServer
from .transport.manager import GameManager, GameServer
from .transport.sticky import sid_prefix

logger = logging.getLogger("gamegw.app")


@dataclass
class Parts:
    settings: Settings
    sio: socketio.AsyncServer
    gateway: Gateway
    registry: Registry
    rooms: RoomStore
    metrics: Metrics
    cluster: Cluster
    bus: Bus
    feed: Feed
    redis: Redis | None = None
    admin_url: str = ""  # the admin listener's bound address, once started (admin_port set)
    ticker: Ticker | None = None  # a ticking game's rooms, advanced here while this instance holds their lease


PARTS = web.AppKey("gamegw_parts", Parts)


def server_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server settings that are part of the gateway's limits (for run_app and AppRunner).

    ``keepalive_timeout`` also bounds a TCP connection that has not sent a whole request yet (a
    half-open or slowloris connection): aiohttp closes it after this long.
    """
    return {"keepalive_timeout": settings.handshake_timeout_s or 75.0}


@web.middleware
async def polling_refused(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    """With ``websocket_only``, say why long-polling fails instead of a bare 400."""
    if request.path.startswith("/socket.io") and request.query.get("transport") == "polling":
        return web.json_response(POLLING_UNAVAILABLE.body(), status=POLLING_UNAVAILABLE.status)
    return await handler(request)


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    rooms: RoomStore | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The gateway as an aiohttp app: in-memory, or cluster mode when ``redis_url`` is set."""
    metrics = Metrics()
    guards = Guards(settings, metrics)
    quiet_bad_http()
    manager = GameManager()
    sio = GameServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=origin_checker(settings),
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        max_http_buffer_size=settings.max_message_bytes,
        http_compression=True,
        logger=False,
        engineio_logger=library_logger("engineio"),
        async_handlers=False,
        json=jsoncodec,
        transports=["websocket"] if settings.websocket_only else ["polling", "websocket"],
        namespaces="*",  # every namespace reaches a handler: /game, or the catch-all that refuses it
        namespace=NAMESPACE,
        handshake_timeout_s=settings.handshake_timeout_s,
        on_handshake_timeout=guards.handshake_timeout,
        engineio_class=ConformantServer,
    )
    # Handle each connection's packets inline, in the order they arrived: a client's moves can
    # never be reordered, a client's own disconnect is never taken for a transport close, and
    # no task is created per message (the library's default costs CPU on the hot path).
    sio.eio.async_handlers = False
    if settings.worker_index and isinstance(sio.eio, ConformantServer):
        sio.eio.sid_prefix = sid_prefix(settings.worker_index)  # the parent routes a session's requests by it
    transports = websocket.install(sio.eio, compress=settings.websocket_compression,
                                   max_outbound_bytes=settings.max_outbound_bytes)
    sio.on_engineio_open = guards.engineio_open
    sio.on_unserved = guards.unserved
    sio.on_bad_event = guards.bad_event
    sio.on_bad_packet = guards.bad_packet
    transports.on_slow_consumer = guards.slow_consumer
    transports.on_message_too_big = guards.message_too_big
    transports.on_bad_frame = guards.bad_frame
    install_guards(sio.eio)
    metrics.transports.set_function(lambda: len(sio.eio.sockets))
    manager.transports = sio.transports = transports
    rules = make_rules(settings)
    redis: Redis | None = None
    bus: Bus
    if settings.redis_url:
        link = RedisLink(parse_redis_url(settings.redis_url),  # the raw connections' way to the master
                         timeout_s=settings.redis_timeout_s)
        redis, keys, pipe = open_redis(link, settings.redis_prefix, max_connections=settings.redis_max_connections,
                                       timeout_s=settings.redis_timeout_s)
        redis_registry = RedisRegistry(redis, keys, settings.instance_id)
        redis_rooms = RedisRoomStore(redis, keys, rules, instance_id=settings.instance_id,
                                     log_size=settings.move_log_size, max_members=settings.max_room_members,
                                     pipe=pipe, wait_replicas=settings.redis_wait_replicas,
                                     wait_timeout_ms=max(1, int(settings.redis_timeout_s * 500)))
        redis_rooms.on_wait_short = metrics.wait_short.inc
        registry, rooms = redis_registry, redis_rooms
        sessions: SessionStore = RedisSessionStore(redis, keys)
        revocations: Revocations = RedisRevocations(redis, keys, ttl_s=settings.jwt_max_lifetime_s,
                                                    leeway_s=settings.jwt_leeway_s)
        redis_bus = RedisBus(redis, keys, settings.instance_id, manager, metrics, link=link,
                             timeout_s=settings.redis_timeout_s)
        redis_bus.probe_interval_s = settings.bus_probe_interval_s
        bus = redis_bus
    else:
        registry = registry or MemoryRegistry()
        rooms = rooms or MemoryRoomStore(rules, log_size=settings.move_log_size, max_members=settings.max_room_members)
        bus = LocalBus(manager, metrics)
        sessions = MemorySessionStore()
        revocations = MemoryRevocations(ttl_s=settings.jwt_max_lifetime_s, leeway_s=settings.jwt_leeway_s,
                                        clock=clock)
    verifier = Verifier(settings, clock=clock)
    sampler = Sampler(metrics)

    def stats() -> dict[str, Any]:
        return {"connections": len(gateway.conns), **sampler.process(), "rates": sampler.rates()}

    feed: Feed
    if redis is not None:
        feed = RedisFeed(redis, keys, settings.instance_id, stats, link=link,
                         timeout_s=settings.redis_timeout_s, clock=clock)
    else:
        feed = LocalFeed(settings.instance_id, stats, clock=clock)
    hooks = Hooks(settings, metrics)
    gateway = Gateway(settings, verifier=verifier, registry=WatchedRegistry(registry, feed), rooms=rooms,
                      sessions=sessions, revocations=revocations, metrics=metrics, transports=transports,
                      guards=guards, hooks=hooks, clock=clock)
    gateway.on_move = feed.move
    guards.gateway = gateway
    cluster: Cluster
    if redis is not None:
        redis_cluster = RedisCluster(redis, keys, gateway, redis_registry, redis_rooms, redis_bus,
                                     heartbeat_interval_s=settings.heartbeat_interval_s,
                                     heartbeat_ttl_s=settings.heartbeat_ttl_s, clock=clock)
        link.on_server_changed = redis_cluster.server_changed
        cluster = redis_cluster
    else:
        cluster = LocalCluster(gateway, clock=clock)
    gateway.bus = bus
    gateway.cluster = cluster
    sio.register_namespace(gateway)
    if isinstance(sio.eio, ConformantServer):
        sio.eio.on_pong = gateway.on_pong
    sio.register_namespace(OtherNamespaces(guards))

    async def connected(sid: str, namespace: str) -> None:
        if namespace == NAMESPACE:
            await gateway.on_connected(sid)

    manager.on_connected = connected

    middlewares: list[Any] = [*guards.middlewares()]
    if settings.websocket_only:
        middlewares.insert(1, polling_refused)
    if settings.worker_handoff_fd >= 0:
        middlewares.insert(0, handoff.one_request_per_connection)
    app = web.Application(middlewares=middlewares)
    ticker = Ticker(rules, rooms, bus, metrics, instance_id=settings.instance_id, lease_s=settings.tick_lease_s,
                    clock=clock, on_move=feed.move)
    parts = app[PARTS] = Parts(settings, sio, gateway, registry, rooms, metrics, cluster, bus, feed, redis,
                               ticker=ticker)
    sio.attach(app)
    app.add_routes(health_routes(rooms=rooms, bus=bus, instance_id=settings.instance_id))
    ops_routes = [*metrics_routes(metrics=metrics),
                  *admin_routes(verifier=verifier, revocations=revocations, registry=registry, cluster=cluster,
                                publish=gateway.publish, on_revoke=feed.revoked),
                  *dashboard_routes(verifier=verifier, revocations=revocations, registry=registry, rooms=rooms,
                                    cluster=cluster, feed=feed, instance_id=settings.instance_id,
                                    leeway_s=settings.jwt_leeway_s, clock=clock)]
    admin_runner: web.AppRunner | None = None
    if settings.admin_listener:
        # /admin/* and /metrics only there: the game listener answers 404 for them
        admin_app = web.Application()
        admin_app.add_routes(health_routes(rooms=rooms, bus=bus, instance_id=settings.instance_id))
        admin_app.add_routes(ops_routes)
        admin_runner = web.AppRunner(admin_app, handle_signals=False, access_log=None, shutdown_timeout=1.0,
                                     **server_options(settings))
    else:
        app.add_routes(ops_routes)

    async def on_startup(app: web.Application) -> None:
        try:
            if admin_runner is not None:  # first: a port that is taken stops startup before anything runs
                sockets = listen(settings.admin_host, settings.admin_port or 0, host_setting="GAMEGW_ADMIN_HOST",
                                 port_setting="--admin-port")
                await admin_runner.setup()
                for sock in sockets:
                    await web.SockSite(admin_runner, sock).start()
                parts.admin_url = url_of(sockets[0])
            if redis is not None:
                await check_redis(redis, settings.redis_url, link)  # before anything waits on it, retrying
            await bus.start()
            await cluster.start()
            await gateway.start()
            await feed.start()
            await ticker.start()
        except BaseException as exc:
            # aiohttp runs no cleanup for a startup that failed: close what was opened here
            await close_parts()
            if redis is not None and isinstance(exc, (RedisError, OSError)):
                raise redis_failure(settings.redis_url, exc) from None
            raise
        log(logger, "start", instance=settings.instance_id, profile=settings.profile, game=settings.game,
            state="redis" if redis is not None else "memory", admin=parts.admin_url or "game listener")
        if not settings.dev and not settings.jwt_audience:
            log(logger, "no_audience", logging.WARNING,
                note="jwt_audience is not set: a token signed with this key for another service is accepted; "
                     "set jwt_audience (and the aud claim of the tokens)")

    async def on_shutdown(app: web.Application) -> None:
        """The listener is already closed (aiohttp stops its sites first): every client gets
        ``4000 shutdown`` and its session stays, as a drop, for another instance to resume."""
        started = time.monotonic()
        feed.end_streams()  # the dashboards' streams would hold the exit; their pages reconnect elsewhere
        sids = list(gateway.conns)
        log(logger, "drain", instance=settings.instance_id, connections=len(sids), drain_s=settings.drain_s)
        limit = asyncio.Semaphore(64)

        async def close(sid: str) -> None:
            async with limit:
                await gateway.close(sid, SHUTDOWN)

        try:
            await asyncio.wait_for(asyncio.gather(*(close(sid) for sid in sids), return_exceptions=True),
                                   max(0.1, settings.drain_s - 1.0))
        except TimeoutError:
            log(logger, "drain_timeout", logging.WARNING, left=len(gateway.conns))
        # Each close ended its transport; end those that never joined /game too, and cut after
        # a moment those whose clients do not close their end: their handlers would hold the exit.
        for eio_sid in list(sio.eio.sockets):
            await sio.end_transport(eio_sid)
        await asyncio.sleep(0.2)
        transports.abort_all()
        log(logger, "drained", instance=settings.instance_id, closed=len(sids) - len(gateway.conns),
            took_ms=int((time.monotonic() - started) * 1000))

    closed = False

    async def close_parts() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        if admin_runner is not None:
            await admin_runner.cleanup()
        await ticker.aclose()
        await feed.aclose()
        await sio.shutdown()
        await gateway.aclose()
        await hooks.aclose()
        await cluster.aclose()
        await bus.aclose()
        await rooms.aclose()
        await registry.aclose()
        await sessions.aclose()
        if redis is not None:
            await redis.aclose()

    async def on_cleanup(app: web.Application) -> None:
        await close_parts()
        log(logger, "stop", instance=settings.instance_id)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Fewer collections of the cycle collector in a server that holds many long-lived objects.

    At CPython's thresholds (700, 10, 10) a storm of 10,000 connects spent 6.6 s of its 21 s in
    the collector (gc.callbacks, loadtests/bench_idle.py), each older-generation pass walking
    every connection's objects again; at 50,000 new container objects between young passes,
    1.9 s. What the start-up made (modules, settings, the app) is frozen out of every pass.
    Nothing is kept longer than the cycles themselves: objects without cycles are freed by their
    reference counts as before."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. uvloop when installed: it measurably speeds up the I/O path.

    Raises :class:`StartupError` (a port in use, Redis unreachable) before ``ready`` is logged;
    ``ready`` means every listener is bound and listening.
    """
    # bound first: a port that is taken stops the start before anything else runs (a worker's
    # connections come from its parent instead, over the handoff channel)
    channel = handoff.channel_of(settings.worker_handoff_fd) if settings.worker_handoff_fd >= 0 else None
    sockets = [] if channel is not None else listen(settings.host, settings.port, reuse_port=settings.reuse_port)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}" if channel is not None else url_of(sockets[0])
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(settings)
    tune_gc()

    async def ready(app: web.Application) -> None:
        log(logger, "ready", instance=settings.instance_id, url=url, admin_url=app[PARTS].admin_url or url)

    app.on_startup.append(ready)
    if channel is not None:
        handoff.serve(app, channel, loop=loop, name=url, shutdown_timeout=settings.drain_s,
                      **server_options(settings))
        return
    try:
        web.run_app(app, sock=sockets, print=None, access_log=None, loop=loop, handle_signals=True,
                    shutdown_timeout=settings.drain_s,
                    # a connect storm must not overflow the listen queue (aiohttp: 128)
                    backlog=4096, **server_options(settings))
    finally:
        for sock in sockets:  # the sites close theirs; these are for a start that failed before them
            sock.close()
