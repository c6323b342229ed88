"""The Redis clients of a gateway: one Redis behind a bounded pool and a pipelined move path,
or a Redis Cluster (``redis+cluster://``, see :mod:`.rcluster`)."""

from __future__ import annotations

from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import rcluster
from .keys import Keys
from .pipe import RedisPipe


def open_redis(url: str, prefix: str, *, max_connections: int,
               timeout_s: float) -> tuple[Redis, Keys, RedisPipe | None]:
    """The shared client, the keys and the move path's pipelined connection (one Redis only)."""
    if rcluster.is_cluster_url(url):
        # slot routing by redis-py; a master that is down fails its own slots' calls only
        cluster = rcluster.client(url, decode_responses=True, require_full_coverage=False,
                                  max_connections=max_connections, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)
        return cast(Redis, cluster), Keys(prefix, cluster=True), None
    # A bounded pool: under load, commands wait for a connection (up to redis_timeout_s)
    # instead of opening one connection per concurrent player.
    pool = BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=timeout_s,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        # one immediate retry (a pooled connection that died with a restarted Redis), not
        # redis-py's default of three with backoff, which hides an outage for seconds
        retry=Retry(NoBackoff(), 1))
    redis = Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
    return redis, Keys(prefix), RedisPipe(url, timeout_s=timeout_s)
