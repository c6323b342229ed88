"""The cluster: instances announce themselves, clean up after dead ones, and act on users
wherever they are connected.

Operations on a user (kick, drop) find the user's connections in the registry, group them by
instance, carry out the local part here and ask each other instance over its channel, then
confirm: the caller learns how many connections were acted on, and whether every instance that
held one answered. :class:`LocalCluster` is the same surface for a single in-memory instance.

Heartbeats: every ``heartbeat_interval_s`` an instance refreshes ``{p}:inst:{iid}:alive`` with
a TTL of ``heartbeat_ttl_s``; its value says when the instance started and beat, its connections,
and its process's CPU (``cpu_pct``, over the last interval) and memory (``rss_bytes``). A
survivor that finds an instance's heartbeat gone takes the instance's reap lock and turns its
connections into drops, within at most ``2 * heartbeat_ttl_s + heartbeat_interval_s`` seconds
(the key expires, then a survivor watches it stay missing for one more TTL): the rooms hear
``player_disconnected``, the sessions wait in grace for their users to come back on any instance, and when grace ends
(``grace_s`` later) the last entries go. No connected entry of a dead instance remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis

from ..auth.revocation import settle
from ..logs import log, stop_task
from ..metrics import Sampler
from ..protocol import codes
from ..protocol.codes import Disconnect, LeftReason
from ..state import rcluster
from ..state.keys import Keys

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..state.registry import Connection
    from ..state.registry_redis import RedisRegistry
    from ..state.rooms_redis import RedisRoomStore
    from .bus import RedisBus

from .api import Outcome

logger = logging.getLogger("gamegw.cluster")
REQUEST_TIMEOUT_S = 2.0


class LocalCluster:
    def __init__(self, gateway: Gateway, *, clock: Callable[[], float] = time.time) -> None:
        self._gateway = gateway
        self._clock = clock
        self._blocked_until: dict[str, float] = {}
        self._started = clock()
        self._sampler = Sampler(gateway.metrics)

    def _here(self, user_id: str, count: int) -> Outcome:
        """One instance: everything acted on is here, and it always confirms."""
        return Outcome(user_id, count, {self._gateway.settings.instance_id: count} if count else {})

    async def kick(self, user_id: str, reason: str) -> Outcome:
        outcome = self._here(user_id, await self._gateway.kick_local(user_id, reason))
        outcome.ended = await self._gateway.end_waiting(user_id, LeftReason.KICKED)
        return outcome

    async def revoke(self, user_id: str, jti: str | None, exp: float | None = None) -> Outcome:
        cut_off = self._clock()
        await self._gateway.revocations.revoke(user_id, jti, cut_off, exp)
        outcome = self._here(user_id, await self._gateway.revoke_local(user_id))
        if jti is None:
            await settle(cut_off, self._clock)
        return outcome

    async def drop(self, user_id: str, block_s: float) -> Outcome:
        if block_s > 0:
            self._blocked_until[user_id] = self._clock() + block_s
        return self._here(user_id, await self._gateway.drop_local(user_id))

    async def close_sid(self, sid: str, why: Disconnect, instance_id: str | None = None) -> bool:
        return await self._gateway.close(sid, why)

    async def is_blocked(self, user_id: str) -> bool:
        until = self._blocked_until.get(user_id)
        if until is None:
            return False
        if until <= self._clock():
            del self._blocked_until[user_id]
            return False
        return True

    async def instances(self) -> list[dict[str, Any]]:
        return [{"instance": self._gateway.settings.instance_id, "started": self._started, "beat": self._clock(),
                 "connections": len(self._gateway.conns), **self._sampler.process(), "alive": True}]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisCluster:
    def __init__(self, redis: Redis, keys: Keys, gateway: Gateway, registry: RedisRegistry, rooms: RedisRoomStore,
                 bus: RedisBus, *, heartbeat_interval_s: float = 1.0, heartbeat_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._gateway = gateway
        self._registry = registry
        self._rooms = rooms
        self._bus = bus
        self._interval = heartbeat_interval_s
        self._ttl = heartbeat_ttl_s
        self._clock = clock
        self._iid = gateway.settings.instance_id
        self._started = clock()
        self._sampler = Sampler(gateway.metrics)  # the heartbeat's CPU is over one heartbeat interval
        self._tasks: list[asyncio.Task[None]] = []
        self._recover_needed = False
        bus.on_control = self._on_control
        bus.on_resubscribed = self._lost_redis
        bus.on_rooms_lost = self._lost_rooms
        bus.rooms = rooms
        rooms.shards = bus.shards
        rooms.on_offline_move = bus.deliver_local
        rooms.on_room_left = bus.forget_room
        rooms.on_moves_lost = lambda _room, lost: gateway.metrics.moves_lost.inc(lost)

    # -- operations on users ----------------------------------------------------------------

    async def kick(self, user_id: str, reason: str) -> Outcome:
        outcome = await self._fan_out(user_id, {"op": "kick", "user": user_id, "reason": reason})
        outcome.ended = await self._gateway.end_waiting(user_id, LeftReason.KICKED)
        return outcome

    async def revoke(self, user_id: str, jti: str | None, exp: float | None = None) -> Outcome:
        cut_off = self._clock()
        await self._gateway.revocations.revoke(user_id, jti, cut_off, exp)
        outcome = await self._fan_out(user_id, {"op": "revoke", "user": user_id})
        if jti is None:
            await settle(cut_off, self._clock)
        return outcome

    async def drop(self, user_id: str, block_s: float) -> Outcome:
        if block_s > 0:
            await self._r.set(self._k.block(user_id), "1", px=max(1, int(block_s * 1000)))
        return await self._fan_out(user_id, {"op": "drop", "user": user_id})

    async def close_sid(self, sid: str, why: Disconnect, instance_id: str | None = None) -> bool:
        if instance_id is None:
            conn = await self._registry.get(sid)
            if conn is None:
                return False
            instance_id = conn.instance_id
        if instance_id == self._iid:
            return await self._gateway.close(sid, why)
        if not await self._r.exists(self._k.alive(instance_id)):
            return False  # its instance is gone: so is the connection (the reaper cleans the entry)
        reply = await self._bus.request(instance_id, {"op": "close", "sid": sid, "reason": why.reason},
                                        REQUEST_TIMEOUT_S)
        return bool(reply and reply.get("count"))

    async def is_blocked(self, user_id: str) -> bool:
        return bool(await self._r.exists(self._k.block(user_id)))

    async def _fan_out(self, user_id: str, body: dict[str, Any]) -> Outcome:
        outcome = Outcome(user_id)
        holders = sorted({c.instance_id for c in await self._registry.list(user_id=user_id)} | {self._iid})

        async def ask(iid: str) -> tuple[str, int | None]:
            if iid == self._iid:
                return iid, int((await self._on_control(body))["count"])
            reply = await self._bus.request(iid, body, REQUEST_TIMEOUT_S)
            return iid, (int(reply["count"]) if reply and "count" in reply else None)

        for iid, count in await asyncio.gather(*(ask(i) for i in holders)):
            if count is None:
                outcome.unconfirmed.append(iid)
            elif count:
                outcome.instances[iid] = count
                outcome.count += count
        return outcome

    async def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "kick":
            return {"count": await self._gateway.kick_local(str(request["user"]), str(request.get("reason", "")))}
        if op == "drop":
            return {"count": await self._gateway.drop_local(str(request["user"]))}
        if op == "revoke":
            return {"count": await self._gateway.revoke_local(str(request["user"]))}
        if op == "close":
            why = codes.DISCONNECTS.get(str(request.get("reason")), codes.SESSION_REPLACED)
            return {"count": int(await self._gateway.close(str(request["sid"]), why))}
        return {"error": f"unknown op {op!r}"}

    # -- membership of the cluster ----------------------------------------------------------

    async def instances(self) -> list[dict[str, Any]]:
        ids = sorted(await self._r.smembers(self._k.instances))
        if not ids:
            return []
        raws = await rcluster.mget(self._r, [self._k.alive(i) for i in ids])
        out = []
        for iid, raw in zip(ids, raws, strict=True):
            info = orjson.loads(raw) if raw else {"instance": iid}
            out.append({**info, "alive": raw is not None})
        return out

    async def start(self) -> None:
        await self.reap(self._iid)  # what an earlier process with our name left behind
        await self._beat()
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="gamegw-heartbeat"),
                       asyncio.create_task(self._reaper_loop(), name="gamegw-reaper")]

    async def _beat(self) -> None:
        info = {"instance": self._iid, "started": self._started, "beat": self._clock(),
                "connections": len(self._gateway.conns), **self._sampler.process()}
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.set(self._k.alive(self._iid), orjson.dumps(info), px=int(self._ttl * 1000))
            pipe.sadd(self._k.instances, self._iid)
            await pipe.execute()
        await self._registry.flush_seen()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._beat()
                if self._recover_needed or self._rooms.down or self._rooms.down_rooms:
                    await self.recover()
            except Exception as exc:
                if not self._recover_needed and await self._rooms.reachable():
                    # Redis answers on another connection: a busy pool, not an outage
                    log(logger, "heartbeat_failed", logging.WARNING, error=str(exc) or type(exc).__name__)
                    continue
                if not self._recover_needed:
                    log(logger, "redis_lost", logging.WARNING, error=str(exc) or type(exc).__name__)
                self._lost_redis()

    def server_changed(self, before: str, after: str) -> None:
        """A connection reached another Redis server (a Sentinel failover, a restart): it may lack
        the newest writes, so it is treated as a Redis that came back empty."""
        self._gateway.metrics.redis_changes.inc()
        self._lost_redis()

    def _lost_redis(self) -> None:
        """Until :meth:`recover` has run, no move gets a seq from Redis: it may have come back
        empty, and a room's seq must never start again from 0. (A Redis Cluster: only the rooms
        whose master failed a call wait, see :meth:`_lost_rooms`; the others play on.)"""
        self._recover_needed = True
        if not self._k.cluster:
            self._rooms.lost()

    def _lost_rooms(self, rooms: set[str]) -> None:
        """A master of a Redis Cluster went away with these rooms' channels."""
        self._recover_needed = True
        self._rooms.lost(rooms)

    async def recover(self) -> dict[str, int]:
        """Redis is back (maybe empty): re-assert what this instance holds, then catch up.

        Registry entries of live connections are written again and stale ones of this instance
        deleted; connections that ended during the outage become drops; the sessions of live
        connections, their rooms' seats, routing and ``seq``, and the moves played offline are
        written back; rooms whose moves pub/sub lost are caught up from their logs."""
        started = time.monotonic()
        gateway = self._gateway
        await self._bus.ensure_listening()
        lost = await self._registry.reassert(set(gateway.conns))
        for conn in lost:
            session = await gateway.sessions.get(conn.session_id)
            if session is None or session.sid != conn.sid or session.state != "connected":
                self._registry.disown(conn.sid)
                await self._registry.forget(conn)
            else:
                await gateway.drop(session, "outage")
        seats: dict[str, dict[str, str]] = {}
        for live in list(gateway.conns.values()):
            if not await gateway.sessions.reassert(live.session):
                continue  # another connection holds the session now
            for room in live.session.rooms:
                seats.setdefault(room, {})[live.session.session_id] = live.claims.user_id
        written = await self._rooms.reassert(seats, self._bus.delivered())
        resyncing = await self._bus.resync(sorted(self._rooms.local_rooms()))
        self._recover_needed = False
        figures = {"connections": len(gateway.conns), "lost": len(lost), "rooms": len(written),
                   "offline_moves": sum(written.values()), "rooms_resyncing": resyncing,
                   "took_ms": int((time.monotonic() - started) * 1000)}
        self._gateway.metrics.recoveries.inc()
        log(logger, "redis_recovered", logging.WARNING, **figures)
        return figures

    async def _reaper_loop(self) -> None:
        """Reap an instance once this one has seen its heartbeat missing for ``heartbeat_ttl_s``
        while Redis was up. After an outage every heartbeat key has expired: the others must get
        to beat again before anyone counts them dead (or their live players would become drops
        and their rooms' routing would go)."""
        missing_since: dict[str, float] = {}
        while True:
            await asyncio.sleep(self._interval)
            if self._recover_needed:
                missing_since.clear()
                continue
            try:
                now = time.monotonic()
                seen = set()
                for iid in await self._r.smembers(self._k.instances):
                    if iid == self._iid or await self._r.exists(self._k.alive(iid)):
                        continue
                    seen.add(iid)
                    if now - missing_since.setdefault(iid, now) < self._ttl:
                        continue
                    if await self._r.set(self._k.reap(iid), self._iid, nx=True, ex=max(2, int(self._ttl))):
                        await self.reap(iid)
                for iid in set(missing_since) - seen:
                    del missing_since[iid]
            except Exception as exc:
                missing_since.clear()
                log(logger, "reaper_failed", logging.WARNING, error=str(exc))

    async def reap(self, iid: str) -> int:
        """A dead instance's connections become drops: their sessions wait in grace, the rooms
        hear ``player_disconnected``, and the instance's routing entries go. Its registry entries
        stay, in state "grace", until grace ends or the users come back."""
        conns: list[Connection] = await self._registry.list(instance_id=iid)
        dropped = 0
        for conn in conns:
            if conn.state != "connected":
                continue
            session = await self._gateway.sessions.get(conn.session_id)
            if session is None or session.sid != conn.sid or session.state != "connected":
                await self._registry.forget(conn)
                continue
            await self._gateway.drop(session, "instance_lost")
            dropped += 1
        for room in await self._r.smembers(self._k.inst_rooms(iid)):
            await self._r.srem(self._k.room(room, "insts"), iid)
        await self._r.delete(self._k.inst_rooms(iid))
        if iid != self._iid and not await self._r.scard(self._k.inst_sids(iid)):
            await self._r.srem(self._k.instances, iid)
            await self._r.delete(self._k.reap(iid))
        if dropped:
            log(logger, "reaped", instance=iid, connections=dropped, by=self._iid)
        return dropped

    async def aclose(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        with contextlib.suppress(Exception):
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.delete(self._k.alive(self._iid))
                pipe.srem(self._k.instances, self._iid)
                await pipe.execute()
