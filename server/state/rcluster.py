"""Redis Cluster mode: ``redis+cluster://host1:port1[,host2:port2...]/0`` (or ``valkey+cluster://``,
parsed by :mod:`.redis_url`).

What changes against one Redis, and nothing else does:

* the client is redis-py's :class:`redis.asyncio.cluster.RedisCluster` (slot routing, MOVED and
  ASK), and calls that name keys of several slots are split (:func:`mget`, pipelines without
  MULTI);
* every script touches the keys of one slot: a room's keys share the ``{room}`` tag, a user's
  sessions, index, budget and grace set share the tag of one of :data:`BUCKETS` buckets (a session
  id starts with its bucket's tag, so the id alone finds its slot);
* room traffic (moves, room events) is published by the room's scripts with ``SPUBLISH`` to the
  room's channel ``{p}:room:{r}:ch`` (:func:`sharded`), which every instance with members in the
  room subscribes to (:mod:`.shards`); control messages keep plain pub/sub on ``{p}:ch:{iid}``.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError

from .redis_url import RedisTarget

BUCKETS = 64  # a user's keys and sessions live in one of this many slots


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

