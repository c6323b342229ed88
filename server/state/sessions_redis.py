"""Sessions in Redis: any instance can resume a session, exactly one ends its grace, and a
user's seats are decided in one script, so that connects racing on several instances cannot
hold more seats than the limit.

A session is a hash ``{p}:sess:{id}`` (the fields of :class:`Session` but the rooms, which are
the hash ``{p}:sess:{id}:rooms``, room -> seq: a join writes one field, whatever the number of
rooms); ``{p}:usess:{uid}`` indexes a user's sessions by creation time and ``{p}:grace`` the
sessions in grace by the end of their grace.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from .keys import Keys
from .sessions import Seat, Session

# Shared by the scripts: a session's hash and rooms, and deleting one completely.
# KEYS: usess grace   ARGV: user's session key prefix ...
_LIB = """
local function sess(id) return ARGV[1] .. id end
local function rooms(id) return ARGV[1] .. id .. ':rooms' end
local function erase(id)
  local r = redis.call('HGETALL', rooms(id))
  redis.call('DEL', sess(id), rooms(id))
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  return r
end
"""

# KEYS: usess grace budget   ARGV: prefix sid instance_id now new_session_id max_live policy user_id
# The seat rule of :func:`server.sessions.decide`, in one step: claim the newest session in
# grace, else create one under the limit, else refuse or take over the oldest live one; evict
# (end) live sessions beyond the limit. Returns {outcome, live, session, rooms, previous_sid,
# previous_instance, dropped_at, {evicted session, evicted rooms, ...}, the user's budget}.
SEAT = _LIB + """
local budget = redis.call('GET', KEYS[3])
local live, grace = {}, {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local state = redis.call('HGET', sess(id), 'state')
  if not state then
    redis.call('ZREM', KEYS[1], id)
  elseif state == 'connected' then
    table.insert(live, id)
  elseif state == 'grace' then
    table.insert(grace, {id, tonumber(redis.call('HGET', sess(id), 'dropped_at')) or 0})
  end
end
local max_live = tonumber(ARGV[6])
local excess = #live - max_live + 1
local evicted = {}
local function evict(n)
  for i = 1, n do
    table.insert(evicted, redis.call('HGETALL', sess(live[i])))
    table.insert(evicted, erase(live[i]))
  end
end
if #grace > 0 then
  if excess > 0 then
    if ARGV[7] == 'refuse' then return {'refused', #live, {}, {}, '', '', '', {}, budget} end
    evict(excess)
  end
  table.sort(grace, function(a, b) return a[2] > b[2] end)
  local id = grace[1][1]
  local dropped_at = redis.call('HGET', sess(id), 'dropped_at')
  local previous = redis.call('HMGET', sess(id), 'sid', 'instance_id')
  redis.call('ZREM', KEYS[2], id)
  redis.call('HSET', sess(id), 'state', 'connected', 'sid', ARGV[2], 'instance_id', ARGV[3],
             'dropped_at', '', 'grace_until', '')
  redis.call('PERSIST', sess(id))
  redis.call('PERSIST', rooms(id))
  return {'resumed', #live, redis.call('HGETALL', sess(id)), redis.call('HGETALL', rooms(id)), previous[1],
          previous[2], dropped_at, evicted, budget}
end
if excess <= 0 then
  local id = ARGV[5]
  redis.call('HSET', sess(id), 'session_id', id, 'user_id', ARGV[8], 'sid', ARGV[2], 'instance_id', ARGV[3],
             'created_at', ARGV[4], 'state', 'connected', 'dropped_at', '', 'grace_until', '', 'cause', '')
  redis.call('ZADD', KEYS[1], ARGV[4], id)
  return {'new', #live, redis.call('HGETALL', sess(id)), {}, '', '', '', evicted, budget}
end
if ARGV[7] == 'refuse' then return {'refused', #live, {}, {}, '', '', '', {}, budget} end
local id = live[1]
local previous = redis.call('HMGET', sess(id), 'sid', 'instance_id')
redis.call('HSET', sess(id), 'sid', ARGV[2], 'instance_id', ARGV[3])
table.remove(live, 1)
evict(excess - 1)
return {'takeover', #live + 1, redis.call('HGETALL', sess(id)), redis.call('HGETALL', rooms(id)),
        previous[1], previous[2], '', evicted, budget}
"""

# KEYS: sess rooms   ARGV: sid room seq ('' forgets the room)
SET_ROOM = """
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[2], ARGV[2]) else redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""

# KEYS: usess grace   ARGV: prefix session_id sid ttl_s grace_until dropped_at cause created_at room seq ...
# Only the connection that holds the session may put it in grace: a new connection may have
# taken it over while the old one's drop was being handled.
DROP = _LIB + """
local id = ARGV[2]
if redis.call('HGET', sess(id), 'sid') ~= ARGV[3] then return 0 end
redis.call('HSET', sess(id), 'state', 'grace', 'grace_until', ARGV[5], 'dropped_at', ARGV[6], 'cause', ARGV[7])
for i = 9, #ARGV, 2 do redis.call('HSET', rooms(id), ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', sess(id), ARGV[4])
redis.call('EXPIRE', rooms(id), ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[8], id)
redis.call('ZADD', KEYS[2], ARGV[5], id)
return 1
"""

# KEYS: usess grace   ARGV: prefix session_id sid
END = _LIB + """
local id = ARGV[2]
if redis.call('HGET', sess(id), 'sid') ~= ARGV[3] then return false end
local head = redis.call('HGETALL', sess(id))
return {head, erase(id)}
"""

# KEYS: grace   ARGV: now prefix
EXPIRE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local k = ARGV[2] .. id
  local head = redis.call('HGETALL', k)
  if #head > 0 and redis.call('HGET', k, 'state') == 'grace' then
    table.insert(out, {head, redis.call('HGETALL', k .. ':rooms')})
    redis.call('DEL', k, k .. ':rooms')
  end
end
return out
"""

# KEYS: sess rooms usess   ARGV: sid created_at session_id field value ... '--' room seq ...
REASSERT = """
local holder = redis.call('HGET', KEYS[1], 'sid')
if holder and holder ~= ARGV[1] then return 0 end
local i = 4
while ARGV[i] ~= '--' do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
i = i + 1
while i < #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
"""

KEEP_AFTER_GRACE_S = 3600  # a session outlives its grace by this much, in case no one sweeps


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


def _opt(value: str | None) -> float | None:
    return float(value) if value else None


def _session(head: list[Any], rooms: list[Any]) -> Session:
    h = _pairs(head)
    return Session(session_id=h["session_id"], user_id=h["user_id"], sid=h["sid"], instance_id=h["instance_id"],
                   created_at=float(h["created_at"]), state=h["state"],
                   rooms={room: int(seq) for room, seq in _pairs(rooms).items()},
                   dropped_at=_opt(h.get("dropped_at")), grace_until=_opt(h.get("grace_until")),
                   cause=h.get("cause", ""))


def _budget(raw: str | None) -> tuple[float, float, float] | None:
    if not raw:
        return None
    events, abuse, stamp = (float(x) for x in raw.split())
    return events, abuse, stamp


def _fields(session: Session) -> list[str]:
    out = []
    for name, value in session.head().items():
        out += [name, "" if value is None else (repr(value) if isinstance(value, float) else str(value))]
    return out


class RedisSessionStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._seat = redis.register_script(SEAT)
        self._set_room = redis.register_script(SET_ROOM)
        self._drop = redis.register_script(DROP)
        self._end = redis.register_script(END)
        self._expire = redis.register_script(EXPIRE_DUE)
        self._reassert = redis.register_script(REASSERT)

    def _user_keys(self, user_id: str) -> list[str]:
        return [self._k.user_sessions(user_id), self._k.grace_of(user_id)]

    async def save_budget(self, user_id: str, snapshot: tuple[float, float, float], ttl_s: float) -> None:
        await self._r.set(self._k.budget(user_id), " ".join(repr(x) for x in snapshot), px=max(1, int(ttl_s * 1000)))

    async def seat(self, *, user_id: str, sid: str, instance_id: str, now: float, new_session_id: str,
                   max_live: int, policy: str) -> Seat:
        out = await self._seat(keys=[*self._user_keys(user_id), self._k.budget(user_id)], args=[
            self._k.session(""), sid, instance_id, repr(now), self._k.session_id(user_id, new_session_id),
            str(max_live), policy, user_id])
        outcome, live = str(out[0]), int(out[1])
        budget = _budget(out[8])
        if outcome == "refused":
            return Seat(outcome, live=live, budget=budget)
        evicted = [_session(out[7][i], out[7][i + 1]) for i in range(0, len(out[7]), 2)]
        return Seat(outcome, _session(out[2], out[3]), previous_sid=out[4] or None,
                    previous_instance=out[5] or None, dropped_at=_opt(out[6] or None), evicted=evicted, live=live,
                    budget=budget)

    async def get(self, session_id: str) -> Session | None:
        key = self._k.session(session_id)
        head, rooms = await self._r.pipeline(transaction=False).hgetall(key).hgetall(key + ":rooms").execute()
        if not head:
            return None
        return _session([x for kv in head.items() for x in kv], [x for kv in rooms.items() for x in kv])

    async def exists(self, session_id: str) -> bool:
        return bool(await self._r.exists(self._k.session(session_id)))

    async def of_user(self, user_id: str) -> list[Session]:
        ids = await self._r.zrange(self._k.user_sessions(user_id), 0, -1)
        found = [await self.get(i) for i in ids]
        return [s for s in found if s is not None]

    async def set_room(self, session: Session, room: str, seq: int | None) -> bool:
        key = self._k.session(session.session_id)
        return bool(int(await self._set_room(keys=[key, key + ":rooms"],
                                             args=[session.sid, room, "" if seq is None else str(seq)])))

    async def drop(self, session: Session, grace_until: float) -> bool:
        session.state, session.grace_until = "grace", grace_until
        ttl_s = max(1, int(grace_until - (session.dropped_at or grace_until)) + KEEP_AFTER_GRACE_S)
        args = [self._k.session(""), session.session_id, session.sid, str(ttl_s), repr(grace_until),
                repr(session.dropped_at or 0.0), session.cause, repr(session.created_at)]
        for room, seq in session.rooms.items():
            args += [room, str(seq)]
        return bool(int(await self._drop(keys=self._user_keys(session.user_id), args=args)))

    async def end(self, session: Session) -> Session | None:
        out = await self._end(keys=self._user_keys(session.user_id),
                              args=[self._k.session(""), session.session_id, session.sid])
        return _session(out[0], out[1]) if out else None

    async def expire_due(self, now: float) -> list[Session]:
        graces = self._k.graces()
        if len(graces) > 1:  # cluster mode: a script only for the grace sets with a session due
            async with self._r.pipeline(transaction=False) as pipe:
                for key in graces:
                    pipe.zrangebyscore(key, "-inf", repr(now), start=0, num=1)
                graces = [key for key, due in zip(graces, await pipe.execute(), strict=True) if due]
        sessions = []
        for key in graces:
            out = await self._expire(keys=[key], args=[repr(now), self._k.session("")])
            sessions += [_session(head, rooms) for head, rooms in out]
        if sessions:
            async with self._r.pipeline(transaction=False) as pipe:
                for s in sessions:
                    pipe.zrem(self._k.user_sessions(s.user_id), s.session_id)
                await pipe.execute()
        return sessions

    async def reassert(self, session: Session) -> bool:
        key = self._k.session(session.session_id)
        args = [session.sid, repr(session.created_at), session.session_id, *_fields(session), "--"]
        for room, seq in session.rooms.items():
            args += [room, str(seq)]
        return bool(int(await self._reassert(keys=[key, key + ":rooms", self._k.user_sessions(session.user_id)],
                                             args=args)))

    async def aclose(self) -> None:
        return None
