"""Sessions in Redis: any instance can resume a session, and exactly one ends its grace."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from .keys import Keys
from .sessions import Session

# KEYS: sess grace   ARGV: session_id sid instance_id
CLAIM = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return false end
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local s = cjson.decode(raw)
s['state'] = 'connected'
s['sid'] = ARGV[2]
s['instance_id'] = ARGV[3]
s['grace_until'] = cjson.null
local out = cjson.encode(s)
redis.call('SET', KEYS[1], out)
return out
"""

# KEYS: sess user_sessions grace   ARGV: sid session_json ttl_s created_at session_id grace_until
# Only the connection that holds the session may put it in grace: a new connection may have
# taken it over while the old one's drop was being handled.
DROP = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['sid'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
return 1
"""

# KEYS: grace   ARGV: now session_key_prefix
EXPIRE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local k = ARGV[2] .. id
  local raw = redis.call('GET', k)
  if raw then
    table.insert(out, raw)
    redis.call('DEL', k)
  end
end
return out
"""

KEEP_AFTER_GRACE_S = 3600  # a session key outlives its grace by this much, in case no one sweeps


class RedisSessionStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._claim = redis.register_script(CLAIM)
        self._expire = redis.register_script(EXPIRE_DUE)
        self._drop = redis.register_script(DROP)

    async def put(self, session: Session) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._k.session(session.session_id), session.dumps())
            pipe.zadd(self._k.user_sessions(session.user_id), {session.session_id: session.created_at})
            await pipe.execute()

    async def get(self, session_id: str) -> Session | None:
        raw = await self._r.get(self._k.session(session_id))
        return Session.loads(raw) if raw else None

    async def of_user(self, user_id: str) -> list[Session]:
        ids = await self._r.zrange(self._k.user_sessions(user_id), 0, -1)
        if not ids:
            return []
        raws = await self._r.mget([self._k.session(i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self._r.zrem(self._k.user_sessions(user_id), *gone)
        return [Session.loads(raw) for raw in raws if raw is not None]

    async def drop(self, session: Session, grace_until: float) -> bool:
        session.state, session.grace_until = "grace", grace_until
        ttl_s = max(1, int(grace_until - session.created_at) + KEEP_AFTER_GRACE_S)
        keys = [self._k.session(session.session_id), self._k.user_sessions(session.user_id), self._k.grace]
        args = [session.sid, session.dumps(), str(ttl_s), repr(session.created_at), session.session_id,
                repr(grace_until)]
        return bool(int(await self._drop(keys=keys, args=args)))

    async def claim(self, session_id: str, sid: str, instance_id: str) -> Session | None:
        raw = await self._claim(keys=[self._k.session(session_id), self._k.grace], args=[session_id, sid, instance_id])
        if not raw:
            return None
        session = Session.loads(raw)
        if isinstance(session.rooms, list):  # cjson writes an empty object as []
            session.rooms = {}
        return session

    async def expire_due(self, now: float) -> list[Session]:
        raws = await self._expire(keys=[self._k.grace], args=[repr(now), self._k.session("")])
        sessions = [Session.loads(raw) for raw in raws]
        if sessions:
            async with self._r.pipeline(transaction=False) as pipe:
                for s in sessions:
                    pipe.zrem(self._k.user_sessions(s.user_id), s.session_id)
                await pipe.execute()
        return sessions

    async def delete(self, session: Session) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(self._k.session(session.session_id))
            pipe.zrem(self._k.user_sessions(session.user_id), session.session_id)
            pipe.zrem(self._k.grace, session.session_id)
            await pipe.execute()

    async def aclose(self) -> None:
        return None
