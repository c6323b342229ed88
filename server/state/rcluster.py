"""Redis Cluster mode: ``redis+cluster://host1:port1[,host2:port2...]/0`` (or ``valkey+cluster://``).

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
from urllib.parse import unquote, urlparse

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError

SCHEMES = ("redis+cluster", "valkey+cluster")
FORMS = "redis+cluster://[user:password@]host1:port1[,host2:port2...]/0"
BUCKETS = 64  # a user's keys and sessions live in one of this many slots


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def _split(url: str) -> tuple[str, list[str], str]:
    """(credentials with their '@' or '', the host:port parts, the path) of a cluster URL."""
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    creds, _, hosts = netloc.rpartition("@")
    return (creds + "@" if creds else ""), hosts.split(","), path


def nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a cluster URL; raises ValueError for a bad one."""
    _creds, hosts, _path = _split(url)
    out = []
    for part in hosts:
        parsed = urlparse("redis://" + part)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ValueError(f"{part!r} is not host:port")
        out.append((parsed.hostname, port))
    return out


def problem(url: str) -> str | None:
    """Why a cluster URL cannot be used, or None."""
    try:
        seeds = nodes(url)
    except ValueError as exc:
        return str(exc)
    if not seeds:
        return "no node"
    path = _split(url)[2].strip("/")
    if path not in ("", "0"):
        return f"a cluster has database 0 only, not {path!r}"
    return None


def node_url(url: str, host: str, port: int) -> str:
    """A plain ``redis://`` URL for one node, with the cluster URL's credentials."""
    creds = _split(url)[0] if is_cluster_url(url) else ""
    return f"redis://{creds}{host}:{port}/0"


def node_urls(url: str) -> list[str]:
    """Where a raw connection may go: the URL itself, or each seed node of a cluster URL."""
    return [node_url(url, h, p) for h, p in nodes(url)] if is_cluster_url(url) else [url]


def client(url: str, **options: Any) -> RedisCluster:
    """A RedisCluster client for a cluster URL (``options`` as for a connection)."""
    creds = _split(url)[0].rstrip("@")
    user, _, password = creds.partition(":")
    if user or password:
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) or None
    startup = [ClusterNode(h, p) for h, p in nodes(url)]
    cluster = _Cluster(startup_nodes=startup, **options)
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


def credentials(url: str) -> tuple[str, str] | None:
    """(user, password) from a cluster URL, for raw connections, or None without a password."""
    creds = _split(url)[0].rstrip("@")
    user, _, password = creds.partition(":")
    return (unquote(user) or "default", unquote(password)) if password else None


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

