"""The connection registry in Redis, shared by every instance of a cluster (see ``keys.py``).

Each instance writes only its own connections and keeps them cached locally, so updates never
read before they write. A connection's rooms are a set of their own (``{p}:conn:{sid}:rooms``),
so a join writes one member whatever the number of rooms. ``last_seen`` is written in batches
(:meth:`flush_seen`, called by the heartbeat) rather than once per event, so in Redis it lags
by at most one heartbeat interval.
"""

from __future__ import annotations

import builtins
import dataclasses
from typing import Any

import orjson
from redis.asyncio import Redis

from . import rcluster
from .keys import Keys
from .registry import Connection

# KEYS: seen   ARGV: conn_key_prefix (sid at)...
FLUSH_SEEN = """
for i = 2, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""


class RedisRegistry:
    def __init__(self, redis: Redis, keys: Keys, instance_id: str) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._instance_id = instance_id
        self._own: dict[str, Connection] = {}
        self._dirty_seen: dict[str, float] = {}
        self._flush = redis.register_script(FLUSH_SEEN)

    async def add(self, conn: Connection) -> None:
        self._own[conn.sid] = conn
        async with self._r.pipeline(transaction=not self._k.cluster) as pipe:  # a cluster has no cross-slot MULTI
            self._write(pipe, conn)
            pipe.sadd(self._k.instances, conn.instance_id)
            await pipe.execute()

    def _write(self, pipe: Any, conn: Connection) -> None:
        pipe.set(self._k.conn(conn.sid), _dump(conn))
        pipe.delete(self._rooms(conn.sid))
        if conn.rooms:
            pipe.sadd(self._rooms(conn.sid), *sorted(conn.rooms))
        pipe.zadd(self._k.user(conn.user_id), {conn.sid: conn.connected_at})
        pipe.sadd(self._k.inst_sids(conn.instance_id), conn.sid)
        pipe.hset(self._k.seen, conn.sid, conn.last_seen)

    def _rooms(self, sid: str) -> str:
        return self._k.conn(sid) + ":rooms"

    async def remove(self, sid: str) -> Connection | None:
        conn = self._own.pop(sid, None) or await self.get(sid)
        self._dirty_seen.pop(sid, None)
        if conn is None:
            return None
        await self.forget(conn)
        return conn

    async def forget(self, conn: Connection) -> None:
        """Delete every trace of a connection (also one of another, dead instance)."""
        async with self._r.pipeline(transaction=not self._k.cluster) as pipe:
            pipe.delete(self._k.conn(conn.sid), self._rooms(conn.sid))
            pipe.zrem(self._k.user(conn.user_id), conn.sid)
            pipe.srem(self._k.inst_sids(conn.instance_id), conn.sid)
            pipe.hdel(self._k.seen, conn.sid)
            await pipe.execute()

    async def get(self, sid: str) -> Connection | None:
        own = self._own.get(sid)
        if own is not None:  # ours: the cache is exact, Redis's last_seen lags by one flush
            return dataclasses.replace(own, rooms=set(own.rooms))
        pipe = self._r.pipeline(transaction=False)
        pipe.get(self._k.conn(sid)).hget(self._k.seen, sid).smembers(self._rooms(sid))
        raw, seen, rooms = await pipe.execute()
        return _load(raw, seen, rooms)

    async def user_sids(self, user_id: str) -> list[str]:
        sids: list[str] = await self._r.zrange(self._k.user(user_id), 0, -1)
        return sids

    async def list(
        self, *, user_id: str | None = None, room: str | None = None, instance_id: str | None = None
    ) -> list[Connection]:
        if user_id is not None:
            sids = await self.user_sids(user_id)
        elif instance_id is not None:
            sids = sorted(await self._r.smembers(self._k.inst_sids(instance_id)))
        else:
            sids = []
            for iid in sorted(await self._r.smembers(self._k.instances)):
                sids.extend(sorted(await self._r.smembers(self._k.inst_sids(iid))))
        if not sids:
            return []
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(self._k.seen, sids)
        for s in sids:
            pipe.smembers(self._rooms(s))
        seens, *rooms = await pipe.execute()
        raws = await rcluster.mget(self._r, [self._k.conn(s) for s in sids])
        conns = [c for c in (_load(raw, seen, rs) for raw, seen, rs in zip(raws, seens, rooms, strict=True))
                 if c is not None]
        return [
            c for c in conns
            if (room is None or room in c.rooms) and (instance_id is None or c.instance_id == instance_id)
        ]

    async def add_room(self, sid: str, room: str) -> None:
        conn = self._own.get(sid)
        if conn is not None and room not in conn.rooms:
            conn.rooms.add(room)
            await self._r.sadd(self._rooms(sid), room)

    async def remove_room(self, sid: str, room: str) -> None:
        conn = self._own.get(sid)
        if conn is not None and room in conn.rooms:
            conn.rooms.discard(room)
            await self._r.srem(self._rooms(sid), room)

    async def touch(self, sid: str, now: float) -> None:
        conn = self._own.get(sid)
        if conn is not None:
            conn.last_seen = now
            self._dirty_seen[sid] = now

    async def mark(self, sid: str, state: str) -> None:
        conn = self._own.get(sid) or await self.get(sid)
        if conn is not None and conn.state != state:
            conn.state = state
            await self._r.set(self._k.conn(sid), _dump(conn), xx=True)

    async def flush_seen(self) -> None:
        """Write the batch of ``last_seen`` times, each only while its entry exists: a batch that
        reached Redis after the connection's removal left a ``seen`` field behind for good."""
        if self._dirty_seen:
            batch, self._dirty_seen = self._dirty_seen, {}
            if self._k.cluster:  # the entries are in other slots than the hash: read them first
                async with self._r.pipeline(transaction=False) as pipe:
                    for sid in batch:
                        pipe.exists(self._k.conn(sid))
                    found = await pipe.execute()
                batch = {sid: at for (sid, at), there in zip(batch.items(), found, strict=True) if there}
                if batch:
                    await self._r.hset(self._k.seen, mapping={sid: repr(at) for sid, at in batch.items()})
                return
            args = [self._k.conn("")] + [x for sid, at in batch.items() for x in (sid, repr(at))]
            await self._flush(keys=[self._k.seen], args=args)

    async def reassert(self, live: set[str]) -> builtins.list[Connection]:
        """After an outage (Redis may be back empty): write this instance's entries again and
        delete those of its own that Redis has and this instance does not. Returns the entries
        still marked connected whose connection ended meanwhile (``live`` are the sids still
        open), for the caller to turn into drops."""
        lost = [c for sid, c in self._own.items() if sid not in live and c.state == "connected"]
        in_redis = set(await self._r.smembers(self._k.inst_sids(self._instance_id)))
        stale = sorted(in_redis - set(self._own))
        stale_raw = await rcluster.mget(self._r, [self._k.conn(sid) for sid in stale]) if stale else []
        async with self._r.pipeline(transaction=False) as pipe:
            for conn in self._own.values():
                self._write(pipe, conn)
            pipe.sadd(self._k.instances, self._instance_id)
            for sid, raw in zip(stale, stale_raw, strict=True):
                old = _load(raw, None, None)
                if old is not None:
                    pipe.zrem(self._k.user(old.user_id), sid)
                pipe.delete(self._k.conn(sid), self._rooms(sid))
                pipe.srem(self._k.inst_sids(self._instance_id), sid)
                pipe.hdel(self._k.seen, sid)
            await pipe.execute()
        return lost

    def disown(self, sid: str) -> None:
        """Forget a connection locally only (Redis will be told by :meth:`reassert`)."""
        self._own.pop(sid, None)
        self._dirty_seen.pop(sid, None)

    async def aclose(self) -> None:
        self._own.clear()
        self._dirty_seen.clear()


def _dump(conn: Connection) -> bytes:
    data = conn.to_dict()
    data.pop("last_seen", None)
    data.pop("rooms", None)
    return orjson.dumps(data)


def _load(raw: Any, seen: Any, rooms: Any) -> Connection | None:
    if raw is None:
        return None
    data = orjson.loads(raw)
    data["last_seen"] = float(seen) if seen is not None else data.get("connected_at", 0.0)
    data["rooms"] = rooms or ()
    return Connection.from_dict(data)
