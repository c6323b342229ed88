"""The way to the Redis master, for every connection the gateway opens.

One Redis: the URL's address. A Redis Cluster: a seed node, or the master a caller names
(:mod:`.shards` subscribes on each master). Sentinel: the sentinels are asked for the master's address on
every (re)connect, so a connection that failed, or that found a replica (``READONLY``), asks
again and follows a failover. The pooled redis-py client does the same through redis-py's
``Sentinel`` (:func:`pooled_client`); the raw connections of the move pipe and of the
subscribers open through :meth:`RedisLink.open`.

Every raw connection also reads the server's ``run_id``. A different one than before means
another server now (a failover, or a restarted Redis): what it holds may be older than what
this instance has delivered, so :attr:`RedisLink.on_server_changed` is told before anything is
written there, and that connection fails (the next one is used normally). The cluster then
re-asserts its state (``RedisCluster.recover``), as for a Redis that came back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from ..logs import log
from .redis_url import RedisTarget

logger = logging.getLogger("gamegw.redis")
Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]  # reader, writer, a hiredis.Reader


class MasterNotFound(ConnectionError):
    """No sentinel named a master (all unreachable, or a failover under way)."""


class ServerChanged(ConnectionError):
    """The connection reached another Redis server than the last one (its ``run_id`` differs)."""


def command(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader, parser: Any, timeout_s: float) -> Any:
    """The next reply on a connection nothing else reads yet (errors returned, not raised)."""
    while (reply := parser.gets()) is False:
        data = await asyncio.wait_for(reader.read(1 << 16), timeout_s)
        if not data:
            raise ConnectionError("Redis closed the connection")
        parser.feed(data)
    return reply


class RedisLink:
    def __init__(self, target: RedisTarget, *, timeout_s: float) -> None:
        self.target = target
        self._timeout_s = timeout_s
        self.run_id: str | None = None  # the server the last raw connection reached
        self.on_server_changed: Callable[[str, str], None] | None = None

    async def master(self) -> tuple[str, int]:
        """The master's address: the URL's, or the first answer of a sentinel, in the URL's order."""
        t = self.target
        if t.kind != "sentinel":
            return t.host, t.port
        errors = []
        for host, port in t.nodes:
            try:
                reply = await self._ask_sentinel(host, port)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                return str(reply[0]), int(reply[1])
            errors.append(f"{host}:{port}: " + (str(reply) if isinstance(reply, hiredis.ReplyError)
                                                else f"no master named {t.service!r}"))
        raise MasterNotFound(f"no sentinel named a master for {t.service!r} ({'; '.join(errors)})")

    async def _ask_sentinel(self, host: str, port: int) -> Any:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self._timeout_s)
        try:
            writer.write(command("SENTINEL", "get-master-addr-by-name", self.target.service))
            return await read_reply(reader, hiredis.Reader(encoding="utf-8", errors="replace"), self._timeout_s)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def open(self, node: tuple[str, int] | None = None) -> Opened:
        """A connection to the master, authenticated and on the URL's database. A cluster: to
        ``node``, or to the first seed node that accepts, from a random one (plain pub/sub
        reaches every node of a cluster); its nodes' run_ids are not compared."""
        t = self.target
        if t.kind == "cluster" and node is None:
            return await self._open_seed()
        if t.path:
            opened = asyncio.open_unix_connection(t.path)
            where = t.path
        else:
            host, port = node or await self.master()
            opened = asyncio.open_connection(host, port, ssl=ssl.create_default_context() if t.tls else None)
            where = f"{host}:{port}"
        reader, writer = await asyncio.wait_for(opened, self._timeout_s)
        parser = hiredis.Reader(encoding="utf-8", errors="replace")
        checks = t.kind != "cluster"
        try:
            setup = []
            if t.password:
                # the two-argument form, as redis-py sends it (HELLO 3 AUTH): Redis accepts any
                # password for a user without one, and the one-argument form would be refused
                setup.append(command("AUTH", t.username or "default", t.password))
            if t.db:
                setup.append(command("SELECT", str(t.db)))
            if checks:
                setup += [command("ROLE"), command("INFO", "server")]
            writer.write(b"".join(setup))
            replies = [await read_reply(reader, parser, self._timeout_s) for _ in setup]
            for reply in replies[:-2] if checks else replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(str(reply))
            if checks:
                self._check_role(replies[-2], replies[-1], where)
        except BaseException:
            writer.close()
            raise
        return reader, writer, parser

    async def _open_seed(self) -> Opened:
        nodes = list(self.target.nodes)
        start = random.randrange(len(nodes))
        for i, node in enumerate(nodes[start:] + nodes[:start]):
            try:
                return await self.open(node)
            except (OSError, TimeoutError):
                if i == len(nodes) - 1:
                    raise
        raise ConnectionError("no Redis node to connect to")

    def _check_role(self, role: Any, info: Any, where: str) -> None:
        # ROLE and INFO are @dangerous to Redis's ACLs: a user without them connects, and
        # failovers are noticed by connection errors and READONLY only
        role, info = (None if isinstance(r, hiredis.ReplyError) else r for r in (role, info))
        if self.target.kind == "sentinel" and role is not None and role[0] != "master":
            raise ConnectionError(f"{where} is a {role[0]}, not the master (a failover under way)")
        if info is not None:
            self._check_server(_run_id(str(info)), where)

    def _check_server(self, run_id: str, where: str) -> None:
        before, self.run_id = self.run_id, run_id
        if before is None or before == run_id:
            return
        log(logger, "redis_changed", logging.WARNING, address=where, run_id=run_id, before=before)
        if self.on_server_changed is not None:
            self.on_server_changed(before, run_id)
        raise ServerChanged(f"Redis at {where} is another server than before (run_id {run_id})")


def _run_id(info: str) -> str:
    for line in info.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:"):].strip()
    return ""


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, bounded as the one-Redis pool is: commands wait for a connection."""


class _SentinelMaster(Redis):
    """The master's client, which also closes the clients of the sentinels it asks."""

    asked: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.asked is not None:
            await self.asked.aclose()


def pooled_client(target: RedisTarget, *, max_connections: int, timeout_s: float, retries: int = 1) -> Redis:
    """A redis-py client with a bounded pool: under load, commands wait for a connection (up to
    ``timeout_s``) instead of opening one per concurrent player. ``retries`` immediate retries
    (a pooled connection that died with a restarted or failed-over Redis), not redis-py's
    default of three with backoff, which hides an outage for seconds."""
    options: dict[str, Any] = {"decode_responses": True, "socket_timeout": timeout_s,
                               "socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), retries)}
    if target.kind != "sentinel":
        pool = BlockingConnectionPool.from_url(target.url, max_connections=max_connections, timeout=timeout_s,
                                               **options)
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
    sentinel = Sentinel(list(target.nodes),  # type: ignore[no-untyped-call]
                        sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s})
    client: _SentinelMaster = sentinel.master_for(
        target.service, redis_class=_SentinelMaster, connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections, timeout=timeout_s, db=target.db, username=target.username,
        password=target.password, **options)
    client.asked = sentinel
    return client
