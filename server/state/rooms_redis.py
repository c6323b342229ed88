"""Rooms in Redis: one room's state is the same on every instance of the cluster.

Each operation on a room is one Lua script, so it is atomic across the cluster and costs one
round trip. A move's script assigns the room's next ``seq``, appends the move to the room's
stream (bounded by ``MAXLEN``) and publishes it to every instance that has members in the
room, this one included: every instance then delivers a room's moves in the order Redis ran
them, which is ``seq`` order, with no gaps and no repeats.

Games whose moves change the state (``stateless_moves = False``) read the state, let the rules
apply the move in Python and write it back with a compare-and-set on the state's version,
retrying on conflict.

When Redis is away, a room whose members are all on this instance keeps playing: its moves get
the next ``seq`` from this instance (nobody else can issue one: no other instance has members
there, and joining needs Redis) and are delivered locally; :meth:`RedisRoomStore.reassert`
writes them back, with the room's membership, routing and ``seq`` when Redis returns, also
empty. A room that spans instances cannot get a cluster-wide ``seq`` and answers ``unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..logs import log
from ..protocol.codes import AckCode
from ..protocol.errors import ActionError, StoreUnavailable
from ..rules import Rules, State
from . import rcluster
from .keys import Keys
from .pipe import RedisPipe
from .rooms import SERVER_USER, Joined, MoveEvent, move_json, move_prefix, move_suffix
from .shards import ShardSubscriber

CAS_RETRIES = 20
WAIT_PAUSE_S = 5.0  # redis_wait_replicas: after a WAIT came back short, moves skip WAIT this long
logger = logging.getLogger("gamegw.rooms")

# KEYS: seq users seats   ARGV: user max_members session_id
# A seat belongs to a session: joining twice through one session seats it once.
JOIN = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('HSETNX', KEYS[3], ARGV[3], ARGV[1]) == 0 then
  return {seq, 0, unpack(redis.call('HKEYS', KEYS[2]))}
end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if n == 1 and redis.call('HLEN', KEYS[2]) > tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[3])
  return {-1}
end
local first = 0
if n == 1 then first = 1 end
return {seq, first, unpack(redis.call('HKEYS', KEYS[2]))}
"""

# KEYS: seq log users insts state ver seats [sess]   ARGV: session_id
# Unseat one session (with the 8th key: only if that session no longer exists, for the sweep).
# Returns {unseated, the user's last seat, the room deleted, the user}.
LEAVE = """
if KEYS[8] and redis.call('EXISTS', KEYS[8]) == 1 then return {0, 0, 0, ''} end
local user = redis.call('HGET', KEYS[7], ARGV[1])
if not user then return {0, 0, 0, ''} end
redis.call('HDEL', KEYS[7], ARGV[1])
local n = redis.call('HINCRBY', KEYS[3], user, -1)
local last = 0
if n <= 0 then
  redis.call('HDEL', KEYS[3], user)
  last = 1
end
if redis.call('HLEN', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  return {1, last, 1, user}
end
return {1, last, 0, user}
"""

# The tail of a move and of a server event: the next seq, the log, the fan-out to the room's
# instances. Returns seq * 1024 + the number of instances in the room.
_APPEND = """local seq = redis.call('INCR', KEYS[1])
local ev = ARGV[1] .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-1', 'e', ev)
local msg = 'M' .. ARGV[6] .. '\\n' .. seq .. '\\n' .. ev
local insts = redis.call('SMEMBERS', KEYS[4])
for _, i in ipairs(insts) do
  redis.call('PUBLISH', ARGV[5] .. i, msg)
end
return seq * 1024 + math.min(#insts, 1023)
"""

# KEYS: seq log users insts state ver
# ARGV: prefix suffix log_size user channel_prefix room expected_ver new_state
# returns seq (-1: not a member, -2: the state changed) * 1024 + the number of instances in the room
MOVE = """
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 0 then return -1024 end
if ARGV[7] ~= '' then
  if (redis.call('GET', KEYS[6]) or '0') ~= ARGV[7] then return -2048 end
  redis.call('SET', KEYS[5], ARGV[8])
  redis.call('INCR', KEYS[6])
end
""" + _APPEND

# KEYS: seq log users insts   ARGV: prefix suffix log_size user channel_prefix room
# A server event (``POST /admin/publish``): any member will do, the publisher need not be one,
# and the state is left alone. Returns as MOVE (-1: the room has no members).
SERVER_MOVE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1024 end
""" + _APPEND

# KEYS: seq log users insts seats [inst_rooms]
# ARGV: instance room log_size last_seq n_seats (session user).. [seq event]..
# Puts back what this instance knows of a room after an outage: the seats of its sessions that
# Redis lost, its routing, a seq never lower than one already given out, and the moves it
# accepted alone while Redis was away. Returns the seq the room had in Redis before.
REASSERT = """
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[5])
for i = 1, n do
  local id, user = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if redis.call('HSETNX', KEYS[5], id, user) == 1 then redis.call('HINCRBY', KEYS[3], user, 1) end
end
if ARGV[1] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[1])
  if KEYS[6] then redis.call('SADD', KEYS[6], ARGV[2]) end
end
local top = before
local i = 6 + 2 * n
while i < #ARGV do
  local seq = tonumber(ARGV[i])
  if seq > top then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-1', 'e', ARGV[i + 1])
    top = seq
  end
  i = i + 2
end
if tonumber(ARGV[4]) > top then top = tonumber(ARGV[4]) end
if top > before then redis.call('SET', KEYS[1], top) end
return before
"""

# KEYS: state ver users   ARGV: expected_ver new_state user member ('1' or '0')
# The state follows the membership: a join's change is written only while the user is still a
# member, a leave's only while it is not (a join and a leave of one user racing through two
# sessions would otherwise leave it in state.players for good), and nothing once the room is
# gone (it would come back as a leftover state). Skipped changes count as done (1).
SET_STATE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 1 end
if redis.call('HEXISTS', KEYS[3], ARGV[3]) ~= tonumber(ARGV[4]) then return 1 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""


# KEYS: lease   ARGV: instance ttl_ms
# Take the room's tick lease when nobody holds it, renew it when we do; 0 while another does.
CLAIM_TICK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease   ARGV: instance
RELEASE_TICK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: seq log users insts state ver lease
# ARGV: instance expected_ver new_state log_size channel_prefix room prefix suffix..
# One tick of a room: written only by the lease's holder (an instance whose lease lapsed while
# it computed the tick is fenced off: -1), with a compare-and-set on the state (-2); each
# suffix becomes a move with the next seq, logged and published as MOVE does. Returns the seq
# before the first.
TICK = """
if redis.call('GET', KEYS[7]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if (redis.call('GET', KEYS[6]) or '0') ~= ARGV[2] then return -2 end
redis.call('SET', KEYS[5], ARGV[3])
redis.call('INCR', KEYS[6])
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
if #ARGV < 8 then return before end
local insts = redis.call('SMEMBERS', KEYS[4])
for i = 8, #ARGV do
  local seq = redis.call('INCR', KEYS[1])
  local ev = ARGV[7] .. seq .. ARGV[i]
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-1', 'e', ev)
  local msg = 'M' .. ARGV[6] .. '\\n' .. seq .. '\\n' .. ev
  for _, inst in ipairs(insts) do
    redis.call('PUBLISH', ARGV[5] .. inst, msg)
  end
end
return before
"""


class _RoomLock(asyncio.Lock):
    """A room's routing lock, with how many callers hold or await it (it goes when none do)."""

    def __init__(self) -> None:
        super().__init__()
        self.users = 0


class RedisRoomStore:
    def __init__(self, redis: Redis, keys: Keys, rules: Rules, *, instance_id: str, log_size: int = 1000,
                 max_members: int = 100, pipe: RedisPipe | rcluster.SlotPipes | None = None, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._rules = rules
        self._instance_id = instance_id
        self._log_size = str(log_size)
        self._max_members = str(max_members)
        self._local: dict[str, set[str]] = {}  # room -> this instance's sids in it
        self._routed: set[str] = set()  # rooms whose routing in Redis names this instance
        self._routing: dict[str, _RoomLock] = {}  # room -> its routing changes, one at a time
        self._spans: dict[str, bool] = {}  # room -> other instances have members too (as last seen)
        self._last_seq: dict[str, int] = {}  # room -> the highest seq its joins and moves here returned
        self._offline: dict[str, list[MoveEvent]] = {}  # moves accepted while Redis was away
        self.down = False  # Redis failed us and nothing has been re-asserted since
        self.down_rooms: set[str] = set()  # cluster mode: the rooms whose shard failed us (the others play on)
        self._back: set[str] = set()  # rooms re-asserted since the last loss: they play on while others wait
        self._losses = 0  # how many times Redis failed us (a recovery that saw one more stops short)
        self.on_offline_move: Callable[[str, MoveEvent], Awaitable[None]] | None = None
        self.on_room_left: Callable[[str], None] | None = None  # the last local member detached
        # room, how many moves this instance gave out or delivered that Redis no longer has (a
        # failover lost the newest writes, or Redis came back empty); found by reassert()
        self.on_moves_lost: Callable[[str, int], None] | None = None
        self.on_wait_short: Callable[[], None] | None = None  # WAIT timed out with too few replicas
        self._wait = (str(wait_replicas), str(wait_timeout_ms)) if wait_replicas else None
        self._wait_paused_until = 0.0  # loop time: no WAIT before then (replicas were missing)
        self._waiting: asyncio.Future[Any] | None = None  # the WAIT the moves acknowledged now share
        fan_out = rcluster.sharded if keys.cluster else str  # cluster: SPUBLISH to the room's channel
        self.shards: ShardSubscriber | None = None  # cluster: the room channels' subscriptions
        self._join = redis.register_script(JOIN)
        self._leave = redis.register_script(LEAVE)
        self._move_script = fan_out(MOVE)  # the pipe's EVAL when Redis lacks it (NOSCRIPT)
        self._move = redis.register_script(self._move_script)
        self._server_move = redis.register_script(fan_out(SERVER_MOVE))
        self._pipe = pipe
        self._set_state = redis.register_script(SET_STATE)
        self._reassert = redis.register_script(REASSERT)
        self._claim_tick = redis.register_script(CLAIM_TICK)
        self._release_tick = redis.register_script(RELEASE_TICK)
        self._tick = redis.register_script(fan_out(TICK))

    async def join(self, room: str, user_id: str, member_id: str) -> Joined:
        seq, _log, users, *_rest, seats = self._k.room_keys(room)
        out = await self._join(keys=[seq, users, seats], args=[user_id, self._max_members, member_id])
        if int(out[0]) < 0:
            raise ActionError(AckCode.ROOM_FULL, f"room {room!r} has {self._max_members} members")
        first = bool(int(out[1]))
        self._saw_seq(room, int(out[0]))
        if first:
            try:
                await self._update_state(room, lambda s: self._rules.on_join(s, user_id), user_id, member=True)
            except ActionError:
                await self.leave(room, user_id, member_id)
                raise
        return Joined(seq=int(out[0]), members=[str(m) for m in out[2:]], first=first)

    async def leave(self, room: str, user_id: str, member_id: str) -> bool:
        _unseated, last, deleted, _user = await self._leave(keys=self._k.room_keys(room), args=[member_id])
        if int(last) and not int(deleted):
            await self._update_state(room, lambda s: self._rules.on_leave(s, user_id), user_id, member=False)
        return bool(int(last))

    async def sweep(self, exists: Callable[[str], Awaitable[bool]]) -> list[tuple[str, str, bool]]:
        """Unseat every session that no longer exists (a crash between a session's end and its
        rooms' unseating). Returns (room, user, the user's last seat) for each seat removed."""
        removed: list[tuple[str, str, bool]] = []
        async for key in self._r.scan_iter(match=self._k.room("*", "seats"), count=1000):
            room = self._k.room_of(str(key))
            for member_id, user_id in (await self._r.hgetall(key)).items():
                if await exists(member_id):
                    continue
                # one step with one Redis; in a cluster the session is in another slot: the
                # check above is the guard (a session that ended does not come back)
                keys = [*self._k.room_keys(room)] + ([] if self._k.cluster else [self._k.session(member_id)])
                unseated, last, deleted, _user = await self._leave(keys=keys, args=[member_id])
                if not int(unseated):
                    continue
                if int(last) and not int(deleted):
                    await self._update_state(room, lambda s, u=user_id: self._rules.on_leave(s, u), user_id,
                                             member=False)
                removed.append((room, str(user_id), bool(int(last))))
        return removed

    async def attach(self, room: str, sid: str) -> None:
        """Route ``room``'s events here; returns once Redis says so (not just an earlier call)."""
        self._local.setdefault(room, set()).add(sid)
        await self._route(room)

    async def detach(self, room: str, sid: str) -> None:
        local = self._local.get(room)
        if local is None or sid not in local:
            return
        local.discard(sid)
        if not local:
            del self._local[room]
            self._spans.pop(room, None)
            if self.on_room_left is not None:
                self.on_room_left(room)
            if room not in self._offline:
                self._last_seq.pop(room, None)
            await self._route(room)

    async def _route(self, room: str) -> None:
        """Make the room's routing in Redis match whether it has local members, one change at a
        time per room. Unserialised, a detach's SREM and an attach's SADD travel over two pool
        connections and can land in either order (the room no longer routed here while it has
        members), and a second attach could return before the first one's SADD had landed:
        either way a resume that reads the room's log next misses the moves published
        meanwhile, and the bus sees no gap to fill (it starts again from the first one here)."""
        lock = self._routing.get(room)
        if lock is None:
            lock = self._routing[room] = _RoomLock()
        lock.users += 1
        try:
            async with lock:
                want = room in self._local
                if want == (room in self._routed):
                    return
                if want and self.shards is not None:  # listening before the join fixes its seq
                    await self.shards.subscribe(self._k.room_channel(room))
                async with self._r.pipeline(transaction=False) as pipe:
                    if want:
                        pipe.sadd(self._k.room(room, "insts"), self._instance_id)
                        pipe.sadd(self._k.inst_rooms(self._instance_id), room)
                        pipe.scard(self._k.room(room, "insts"))
                    else:
                        pipe.srem(self._k.room(room, "insts"), self._instance_id)
                        pipe.srem(self._k.inst_rooms(self._instance_id), room)
                    out = await pipe.execute()
                if want:
                    self._routed.add(room)
                    if room in self._local:
                        self._spans[room] = int(out[2]) > 1
                else:
                    self._routed.discard(room)
                    if self.shards is not None:
                        await self.shards.unsubscribe(self._k.room_channel(room))
        finally:
            lock.users -= 1
            if not lock.users:
                del self._routing[room]

    async def seq(self, room: str) -> int:
        return int(await self._r.get(self._k.room(room, "seq")) or 0)

    async def members(self, room: str) -> list[str]:
        return [str(m) for m in await self._r.hkeys(self._k.room(room, "users"))]

    def _channel(self, room: str) -> list[str]:
        """The room's channel as the last key of its publishing scripts (cluster mode), or none."""
        return [self._k.room_channel(room)] if self._k.cluster else []

    async def _run_move(self, keys: list[str], args: list[str]) -> Any:
        if self._pipe is None:
            return await self._move(keys=keys, args=args)
        out = await self._pipe.evalsha(self._move.sha, self._move_script, keys, args)
        if self._wait is not None and isinstance(self._pipe, RedisPipe) and int(out) >= 0 and self._waiting_allowed():
            await self._replicated(self._pipe, self._wait)
        return out

    async def _replicated(self, pipe: RedisPipe, wait: tuple[str, str]) -> None:
        """redis_wait_replicas: until replicas have this move (or WAIT's timeout). WAIT counts
        every write of the connection before it, so the moves whose replies came while one WAIT
        is pending share it (it went, or will go, after them): one WAIT per round trip, not one
        per move, each holding the pipe's one connection in turn. A short count is not an error
        (the move is in the room already): it is counted, and WAIT pauses for WAIT_PAUSE_S, so
        that while replicas are missing (after a failover the new master has none) moves do not
        wait their turn behind WAIT's timeout, past redis_timeout_s."""
        if self._waiting is None or self._waiting.done():
            self._waiting = asyncio.ensure_future(pipe.call("WAIT", *wait))
            self._waiting.add_done_callback(self._waited)
        await asyncio.shield(self._waiting)

    def _waited(self, waiting: asyncio.Future[Any]) -> None:
        assert self._wait is not None
        if not waiting.cancelled() and waiting.exception() is None and int(waiting.result()) < int(self._wait[0]):
            self._wait_paused_until = asyncio.get_running_loop().time() + WAIT_PAUSE_S
            if self.on_wait_short:
                self.on_wait_short()

    def _waiting_allowed(self) -> bool:
        """Whether WAIT is not paused (a short count paused it, see _run_move)."""
        return asyncio.get_running_loop().time() >= self._wait_paused_until

    def lost(self, rooms: set[str] | None = None) -> None:
        """Redis failed us, or came back as another server (these rooms' Redis Cluster master, or
        all of it): the rooms' seq there may be behind what was given out, so no move takes one
        from Redis until :meth:`reassert` has put the floor back (rooms here alone play offline)."""
        self._losses += 1
        if rooms is None:
            self.down = True
            self._back.clear()
        else:
            self.down_rooms |= rooms
            self._back -= rooms

    def _held(self, room: str) -> bool:
        """Whether the room must not take a seq from Redis: it was lost and its turn in
        :meth:`reassert` has not come yet, or it has offline moves still to write back."""
        return room in self._offline or ((self.down or room in self.down_rooms) and room not in self._back)

    async def move(self, room: str, user_id: str, action: dict[str, Any], action_json: str, ts: int) -> MoveEvent:
        if self._held(room):
            return await self._move_offline(room, user_id, action, action_json, ts)
        try:
            return await self._move_online(room, user_id, action, action_json, ts)
        except (RedisError, OSError, TimeoutError) as exc:
            log(logger, "move_store_lost", logging.WARNING, room=room, error=f"{type(exc).__name__}: {exc}")
            self.lost({room} if self._k.cluster else None)
            return await self._move_offline(room, user_id, action, action_json, ts)

    async def _move_online(self, room: str, user_id: str, action: dict[str, Any], action_json: str,
                           ts: int) -> MoveEvent:
        keys = self._k.room_keys(room) + self._channel(room)
        prefix = move_prefix(room)
        fixed = [self._log_size, user_id, self._k.channel_prefix, room]
        if self._rules.stateless_moves:
            self._rules.apply({}, user_id, action)
            out = await self._run_move(keys, [prefix, move_suffix(user_id, action_json, ts), *fixed, "", ""])
        else:
            for _ in range(CAS_RETRIES):
                state, ver, member = await self._read_move_state(room, user_id)
                if not member:  # the rules see members only (an arena has no cell for anyone else)
                    raise ActionError(AckCode.NOT_IN_ROOM, f"not in room {room!r}")
                applied = self._rules.apply(state, user_id, action)
                aj = action_json if applied is action else orjson.dumps(applied).decode()
                out = await self._run_move(keys, [prefix, move_suffix(user_id, aj, ts), *fixed, ver,
                                                  orjson.dumps(state).decode()])
                if int(out) != -2048:
                    action_json = aj
                    break
            else:
                raise ActionError(AckCode.UNAVAILABLE, "the room is too busy, retry")
        seq, insts = divmod(int(out), 1024)
        if seq == -1:
            raise ActionError(AckCode.NOT_IN_ROOM, f"not in room {room!r}")
        self._spans[room] = insts > 1
        self._saw_seq(room, seq)
        return MoveEvent(seq, prefix + str(seq) + move_suffix(user_id, action_json, ts))

    async def publish(self, room: str, user_id: str, action_json: str, ts: int) -> MoveEvent | None:
        if self._held(room):  # the room's seq is this instance's own until reassert() writes it back
            raise StoreUnavailable()
        keys = self._k.room_keys(room)[:4] + self._channel(room)
        prefix = move_prefix(room)
        out = await self._server_move(keys=keys, args=[prefix, move_suffix(user_id, action_json, ts), self._log_size,
                                                       user_id, self._k.channel_prefix, room])
        seq, insts = divmod(int(out), 1024)
        if seq == -1:
            return None
        if room in self._local:  # what reassert() must not fall below, for rooms with members here only
            self._spans[room] = insts > 1
            self._saw_seq(room, seq)
        return MoveEvent(seq, prefix + str(seq) + move_suffix(user_id, action_json, ts))

    async def _move_offline(self, room: str, user_id: str, action: dict[str, Any], action_json: str,
                            ts: int) -> MoveEvent:
        """Redis is away: play on if this instance alone has the room, else ``unavailable``."""
        if room not in self._local or self._spans.get(room, True) or not self._rules.stateless_moves:
            raise StoreUnavailable()
        self._rules.apply({}, user_id, action)
        seq = self._last_seq.get(room, 0) + 1
        self._last_seq[room] = seq
        event = MoveEvent(seq, move_json(room, seq, user_id, action_json, ts))
        self._offline.setdefault(room, []).append(event)
        if self.on_offline_move is not None:
            await self.on_offline_move(room, event)
        return event

    def local_rooms(self) -> list[str]:
        return list(self._local)

    def _saw_seq(self, room: str, seq: int) -> None:
        if seq > self._last_seq.get(room, 0):
            self._last_seq[room] = seq

    def note_remote(self, room: str) -> None:
        """Another instance has members in ``room`` (the bus heard it from there)."""
        self._spans[room] = True

    async def reassert(self, seats: dict[str, dict[str, str]], delivered: dict[str, int]) -> dict[str, int]:
        """After an outage: put back this instance's rooms (``seats``: room -> {session: user}
        seated through live connections here), their routing and ``seq`` (never below what the joins and moves
        here returned, nor below ``delivered``: the last seq the bus delivered here, per room),
        and the moves accepted offline; the seated users are put back into the game state too
        (``on_join``, which leaves a user the state still has as it is: a Redis back empty lost
        the state, and an arena's rules cannot apply a move of a player they do not know).
        Returns, per room, how many offline moves were written back. Moves below that floor that
        Redis no longer has (a failover lost the newest writes: replication is asynchronous) are
        reported to :attr:`on_moves_lost`; a ``sync`` across them answers ``complete: false``."""
        written: dict[str, int] = {}
        losses = self._losses
        for room in sorted(set(seats) | set(self._local) | set(self._offline)):
            written[room] = await self._reassert_room(room, sorted(seats.get(room, {}).items()),
                                                      delivered.get(room, 0))
            if self._losses != losses:
                return written  # Redis failed us again meanwhile: the next recovery starts over
            self._back.add(room)
        if not self._offline:  # else a room played offline meanwhile (joined after this began)
            self.down = False
            self.down_rooms.clear()
            self._back.clear()
        return written

    async def _reassert_room(self, room: str, seated: list[tuple[str, str]], delivered: int) -> int:
        """One room's part of :meth:`reassert`. Its moves keep going offline until it is done
        (this awaits Redis): after the first pass, which also counts what Redis lost and puts
        back the routing and the game state, each pass writes back the moves accepted meanwhile,
        until none are left. Returns how many it wrote."""
        floor, before, offline, routed = await self._write_back(room, seated, delivered)
        lost = floor - before - sum(1 for e in offline if e.seq > before)
        # lost for players who saw them and sit here still; a room nobody here sits in any
        # more may have been emptied and deleted meanwhile (its floor is not a loss)
        if lost > 0 and seated:
            log(logger, "moves_lost", logging.WARNING, room=room, redis_seq=before, seq=floor, lost=lost)
            if self.on_moves_lost is not None:
                self.on_moves_lost(room, lost)
        if routed:
            if self._k.cluster:  # another slot: a step of its own
                await self._r.sadd(self._k.inst_rooms(self._instance_id), room)
            self._routed.add(room)
        for _session_id, user_id in seated:  # a state that went with the data seats them again
            await self._update_state(room, lambda s, u=user_id: self._rules.on_join(s, u), user_id, member=True)
        written = len(offline)
        while room in self._offline:
            written += len((await self._write_back(room, [], delivered))[2])
        return written

    async def _write_back(self, room: str, seated: list[tuple[str, str]],
                          delivered: int) -> tuple[int, int, list[MoveEvent], bool]:
        """One REASSERT of the room: the seats, the routing if it has members here, a seq floor
        and the offline moves accepted so far, which then leave the room's backlog. Returns the
        floor, the seq Redis had before, the moves written and whether it was routed here."""
        room_keys = self._k.room_keys(room)
        keys = [*room_keys[:4], room_keys[6]] + ([] if self._k.cluster else [self._k.inst_rooms(self._instance_id)])
        offline = list(self._offline.get(room, ()))
        floor = max(self._last_seq.get(room, 0), delivered)
        routed = room in self._local
        args = [self._instance_id if routed else "", room, self._log_size, str(floor), str(len(seated)),
                *[x for pair in seated for x in pair], *[x for e in offline for x in (str(e.seq), e.json)]]
        before = int(await self._reassert(keys=keys, args=args))
        if offline and before > offline[0].seq - 1:
            log(logger, "offline_conflict", logging.WARNING, room=room, redis_seq=before,
                offline_from=offline[0].seq)
        rest = self._offline.get(room, [])
        del rest[:len(offline)]  # moves accepted during the await stay, for the next pass
        if not rest:
            self._offline.pop(room, None)
        return floor, before, offline, routed

    async def events_after(self, room: str, after_seq: int) -> tuple[list[MoveEvent], bool]:
        seq = int(await self._r.get(self._k.room(room, "seq")) or 0)
        if after_seq >= seq:
            return [], True
        entries = await self._r.xrange(self._k.room(room, "log"), min=f"{after_seq + 1}-1", max="+")
        events = [MoveEvent(int(str(eid).split("-")[0]), str(fields["e"])) for eid, fields in entries]
        return events, bool(events) and events[0].seq == after_seq + 1

    async def state(self, room: str) -> tuple[int, State]:
        seq, raw = await self._r.mget([self._k.room(room, "seq"), self._k.room(room, "state")])
        state = orjson.loads(raw) if raw is not None else self._rules.initial_state()
        return int(seq or 0), state

    async def claim_tick(self, room: str, ttl_ms: int) -> bool:
        return bool(int(await self._claim_tick(keys=[self._k.room(room, "tick")],
                                               args=[self._instance_id, str(ttl_ms)])))

    async def release_tick(self, room: str) -> None:
        await self._release_tick(keys=[self._k.room(room, "tick")], args=[self._instance_id])

    async def tick(self, room: str, now: float, ts: int) -> list[MoveEvent]:
        if self._held(room):
            return []  # the room's seq may be behind in Redis until reassert() has run
        keys = [*self._k.room_keys(room)[:6], self._k.room(room, "tick"), *self._channel(room)]
        prefix = move_prefix(room)
        for _ in range(CAS_RETRIES):
            state, ver = await self._read_state(room)
            actions = self._rules.tick(state, now)
            suffixes = [move_suffix(SERVER_USER, orjson.dumps(a).decode(), ts) for a in actions]
            args = [self._instance_id, ver, orjson.dumps(state).decode(), self._log_size, self._k.channel_prefix,
                    room, prefix, *suffixes]
            before = int(await self._tick(keys=keys, args=args))
            if before == -1:
                return []
            if before != -2:
                self._saw_seq(room, before + len(suffixes))
                return [MoveEvent(before + i, prefix + str(before + i) + suffix)
                        for i, suffix in enumerate(suffixes, 1)]
        return []  # the players' moves kept winning the compare-and-set: the next tick tries again

    async def _read_state(self, room: str) -> tuple[State, str]:
        raw, ver = await self._r.mget([self._k.room(room, "state"), self._k.room(room, "ver")])
        state = orjson.loads(raw) if raw is not None else self._rules.initial_state()
        return state, str(ver or "0")

    async def _read_move_state(self, room: str, user_id: str) -> tuple[State, str, bool]:
        """The state, its version and whether ``user_id`` is a member, in one round trip."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.get(self._k.room(room, "state")).get(self._k.room(room, "ver"))  # no MGET in a cluster pipeline
            pipe.hexists(self._k.room(room, "users"), user_id)
            raw, ver, member = await pipe.execute()
        state = orjson.loads(raw) if raw is not None else self._rules.initial_state()
        return state, str(ver or "0"), bool(member)

    async def _update_state(self, room: str, change: Any, user_id: str, *, member: bool) -> None:
        keys = [self._k.room(room, "state"), self._k.room(room, "ver"), self._k.room(room, "users")]
        for _ in range(CAS_RETRIES):
            state, ver = await self._read_state(room)
            change(state)
            args = [ver, orjson.dumps(state).decode(), user_id, "1" if member else "0"]
            if int(await self._set_state(keys=keys, args=args)):
                return
        raise ActionError(AckCode.UNAVAILABLE, "the room is too busy, retry")

    async def reachable(self) -> bool:
        """Whether Redis answers on the move path's own connection (not the shared pool)."""
        try:
            if isinstance(self._pipe, RedisPipe):
                await self._pipe.call("PING")
            else:
                await self._r.ping()
            return True
        except (RedisError, OSError, TimeoutError):
            return False

    async def ping(self) -> None:
        await self._r.ping()

    async def aclose(self) -> None:
        self._local.clear()
        if self._pipe is not None:
            await self._pipe.aclose()
