"""The Redis clients of a gateway: one Redis (or its Sentinel master) behind a bounded pool and
a pipelined move path, or a Redis Cluster (``redis+cluster://``, see :mod:`.rcluster`)."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from . import rcluster
from .keys import Keys
from .pipe import RedisPipe
from .redis_link import RedisLink, pooled_client
from .redis_url import RedisTarget


def redis_client(target: RedisTarget, *, max_connections: int, timeout_s: float) -> Redis:
    """The shared redis-py client of ``target``: pooled (one Redis, Sentinel), or a cluster's."""
    if target.kind == "cluster":
        # slot routing by redis-py; a master that is down fails its own slots' calls only
        cluster = rcluster.client(target, decode_responses=True, require_full_coverage=False,
                                  max_connections=max_connections, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)
        return cast(Redis, cluster)
    return pooled_client(target, max_connections=max_connections, timeout_s=timeout_s)


def open_redis(link: RedisLink, prefix: str, *, max_connections: int,
               timeout_s: float) -> tuple[Redis, Keys, RedisPipe | rcluster.SlotPipes]:
    """The shared client, the keys and the move path's pipelined connection (one per master on a
    cluster)."""
    redis = redis_client(link.target, max_connections=max_connections, timeout_s=timeout_s)
    if link.target.kind == "cluster":
        return redis, Keys(prefix, cluster=True), rcluster.SlotPipes(cast(RedisCluster, redis), link,
                                                                     timeout_s=timeout_s)
    return redis, Keys(prefix), RedisPipe(link, timeout_s=timeout_s)
