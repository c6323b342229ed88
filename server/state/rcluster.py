"""Redis Cluster mode: ``redis+cluster://host1:port1[,host2:port2...]/0`` (or ``valkey+cluster://``,
parsed by :mod:`.redis_url`).

What changes against one Redis, and nothing else does:

* the client is redis-py's :class:`redis.asyncio.cluster.RedisCluster` (slot routing, MOVED and
  ASK), and calls that name keys of several slots are split (:func:`mget`, pipelines without
  MULTI);
* every script touches the keys of one slot: a room's keys share the ``{room}`` tag, a user's
  sessions, index, budget and grace set share the tag of one of :data:`BUCKETS` buckets (a session
  id starts with its bucket's tag, so the id alone finds its slot);
* the move path is pipelined as on one Redis, one connection per master (:class:`SlotPipes`);
* room traffic (moves, room events) is published by the room's scripts with ``SPUBLISH`` to the
  room's channel ``{p}:room:{r}:ch`` (:func:`sharded`), which every instance with members in the
  room subscribes to (:mod:`.shards`); control messages keep plain pub/sub on ``{p}:ch:{iid}``.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from typing import Any

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterError, ConnectionError, MovedError, ResponseError, SlotNotCoveredError

from .pipe import RedisPipe
from .redis_link import RedisLink
from .redis_url import RedisTarget

BUCKETS = 64  # a user's keys and sessions live in one of this many slots
REDIRECTS = 5  # MOVED and ASK answers a call follows before it fails
TRYAGAIN_S = 0.05  # a script whose keys are half migrated waits this long before it goes again


def client(target: RedisTarget, **options: Any) -> RedisCluster:
    """A RedisCluster client for a cluster target (``options`` as for a connection)."""
    if target.username or target.password:
        options["username"] = target.username
        options["password"] = target.password
    cluster = _Cluster(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes], **options)
    cluster.commands_parser = _CommandTable()
    return cluster


class _Cluster(RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py closes every node's connections when a slot map refresh fails (a master just
        # went away), also one another call is still opening: that call fails with an
        # AttributeError. Its command was not sent yet: once more, on a new connection.
        for attempt in (1, 2):
            try:
                return await super().execute_command(*args, **kwargs)
            except AttributeError as exc:
                if attempt == 2 or not _while_connecting(exc):
                    raise ConnectionError(f"the connection was closed under the call ({exc})") from exc
        raise AssertionError("unreachable")


def _while_connecting(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a connection was being set up (before any command went)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "on_connect_check_health":
            return True
        tb = tb.tb_next
    return False


class SlotPipes:
    """The move path over a cluster: a :class:`~.pipe.RedisPipe` per master, each script sent to
    the master of its keys' slot (they share one: the room's tag). Through redis-py every move
    paid its slot checks, a pooled connection and the packing of its command: most of what a
    cluster instance spent on a move, about a third of its CPU under load.

    redis-py's slot map says where a slot lives. A ``MOVED`` answer (a failover, a slot moved
    for good) updates it and the call goes to the new master; ``ASK`` (the slot is being
    migrated, the room's keys are already on the target) sends it once to the target, after
    ``ASKING``; ``TRYAGAIN`` (the slot is being migrated and some of the room's keys do not
    exist) asks again every :data:`TRYAGAIN_S`, for up to the call's timeout.
    """

    def __init__(self, cluster: RedisCluster, link: RedisLink, *, timeout_s: float) -> None:
        self._cluster = cluster
        self._link = link
        self._timeout_s = timeout_s
        self._pipes: dict[tuple[str, int], RedisPipe] = {}

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[str]) -> Any:
        nodes = self._cluster.nodes_manager
        try:
            node = nodes.get_node_from_slot(self._cluster.keyslot(keys[0]))
        except SlotNotCoveredError as exc:  # its master went away and no replica took over
            raise ClusterError(str(exc)) from exc
        where, asking = (node.host, int(node.port)), False
        redirects, deadline = 0, 0.0
        while True:
            try:
                return await self._pipe(where).evalsha(sha, script, keys, args, asking=asking)
            except ResponseError as exc:
                kind, _, rest = str(exc).partition(" ")
                if kind == "TRYAGAIN":
                    now = asyncio.get_running_loop().time()
                    deadline = deadline or now + self._timeout_s
                    if now >= deadline:
                        raise
                    await asyncio.sleep(TRYAGAIN_S)
                    continue
                if kind not in ("MOVED", "ASK"):
                    raise
                redirects += 1
                if redirects > REDIRECTS:
                    raise ClusterError(f"the slot of {keys[0]!r} still moves after {REDIRECTS} redirections") from exc
                if kind == "MOVED":
                    moved = MovedError(rest)
                    await nodes.move_slot(moved)
                    where, asking = moved.node_addr, False
                else:
                    where, asking = AskError(rest).node_addr, True

    def _pipe(self, where: tuple[str, int]) -> RedisPipe:
        pipe = self._pipes.get(where)
        if pipe is None:
            pipe = self._pipes[where] = RedisPipe(self._link, timeout_s=self._timeout_s, node=where)
        return pipe

    async def aclose(self) -> None:
        for pipe in self._pipes.values():
            await pipe.aclose()


class _CommandTable(AsyncCommandsParser):
    """The command table, read once. redis-py reads it again, from the first master, whenever
    it refreshes its slot map after a failed call: with that master down, every call to the
    other masters would fail too (a restarted master stopped every room, not only its own)."""

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if not self.commands:
            await super().initialize(node)


async def mget(redis: Any, keys: list[str]) -> list[Any]:
    """MGET, split by slot on a cluster (each key read on its own master)."""
    if isinstance(redis, RedisCluster):
        return list(await redis.mget_nonatomic(keys))
    return list(await redis.mget(keys))


def bucket(user_id: str) -> str:
    """The hash tag of the bucket that holds ``user_id``'s keys and sessions."""
    return f"{{u{binascii.crc_hqx(user_id.encode(), 0) % BUCKETS}}}"


# The fan-out of a room's scripts to every instance with members in the room ...
_FAN_OUT = re.compile(r"for _, (\w+) in ipairs\((.+?)\) do\s+redis\.call\('PUBLISH', ARGV\[\d+\] \.\. \1, "
                      r"(\w+|ARGV\[\d+\])\)\s+end")


def sharded(script: str) -> str:
    """... becomes one SPUBLISH to the room's channel, passed as the script's last key."""
    out, n = _FAN_OUT.subn(r"redis.call('SPUBLISH', KEYS[#KEYS], \3)", script)
    if not n:
        raise ValueError("the script has no fan-out to make sharded")
    return out

