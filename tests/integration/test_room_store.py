"""Room seats: the memory and the Redis room store pass the same suite.

A seat belongs to a session: joining twice through one session seats it once, leaving unseats
that session only, and the sweep removes seats whose session no longer exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from gamegw.server.protocol.codes import AckCode
from gamegw.server.protocol.errors import ActionError
from gamegw.server.rules.relay import Relay
from gamegw.server.state.keys import Keys
from gamegw.server.state.rooms import MemoryRoomStore, RoomStore
from gamegw.server.state.rooms_redis import RedisRoomStore


@pytest.fixture(params=["memory", "redis"])
async def rooms(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[RoomStore]:
    if request.param == "memory":
        mem: RoomStore = MemoryRoomStore(Relay(), max_members=3)
        yield mem
        await mem.aclose()
        return
    server = request.getfixturevalue("redis_server")
    redis = Redis.from_url(server.url, decode_responses=True)
    red: RoomStore = RedisRoomStore(redis, Keys(redis_prefix), Relay(), instance_id="gw-1", max_members=3)
    yield red
    await red.aclose()
    await redis.aclose()


async def players(rooms: RoomStore, room: str) -> list[str]:
    return sorted((await rooms.state(room))[1]["players"])


async def test_a_seat_belongs_to_a_session(rooms: RoomStore) -> None:
    assert (await rooms.join("r", "alice", "s1")).first
    again = await rooms.join("r", "alice", "s1")  # the same session twice: one seat
    assert not again.first and again.members == ["alice"]
    assert not (await rooms.join("r", "alice", "s2")).first  # a second session of alice
    assert not await rooms.leave("r", "alice", "s1")  # s2 still seats alice
    assert not await rooms.leave("r", "alice", "s1")  # leaving twice unseats once
    assert await rooms.members("r") == ["alice"] and await players(rooms, "r") == ["alice"]
    assert await rooms.leave("r", "alice", "s2")
    assert await rooms.members("r") == []


async def test_the_sweep_removes_seats_of_sessions_that_are_gone(rooms: RoomStore) -> None:
    await rooms.join("r", "alice", "s-alice")
    await rooms.join("r", "bob", "s-bob")
    await rooms.join("q", "bob", "s-bob-2")
    alive = {"s-bob"}

    async def exists(session_id: str) -> bool:
        return session_id in alive

    removed = await rooms.sweep(exists)
    assert sorted(removed) == [("q", "bob", True), ("r", "alice", True)]
    assert await rooms.members("r") == ["bob"] and await players(rooms, "r") == ["bob"]
    assert await rooms.members("q") == []
    assert await rooms.sweep(exists) == []


async def test_a_full_room_refuses_a_new_user_but_seats_a_member_again(rooms: RoomStore) -> None:
    for user in ("a", "b", "c"):
        await rooms.join("r", user, f"s-{user}")
    with pytest.raises(Exception, match="3 members"):
        await rooms.join("r", "d", "s-d")
    assert not (await rooms.join("r", "a", "s-a2")).first
    assert sorted(await rooms.members("r")) == ["a", "b", "c"]


async def test_a_late_state_change_follows_the_membership(redis_server, redis_prefix) -> None:
    """A join's state change that lands after the user's leave (a join and a leave racing
    through two sessions) no longer puts the user back into ``state.players``, and one that
    lands after the room is gone no longer recreates its keys."""
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(redis_prefix)
    rooms = RedisRoomStore(redis, keys, Relay(), instance_id="gw-1")
    rules = Relay()
    try:
        await rooms.join("r", "alice", "s1")
        await rooms.join("r", "bob", "s2")
        await rooms.leave("r", "alice", "s1")
        await rooms._update_state("r", lambda s: rules.on_join(s, "alice"), "alice", member=True)  # late
        assert (await rooms.state("r"))[1]["players"] == ["bob"]
        await rooms.leave("r", "bob", "s2")
        await rooms._update_state("r", lambda s: rules.on_leave(s, "bob"), "bob", member=False)  # late
        assert [k async for k in redis.scan_iter(match=f"{redis_prefix}:room:*")] == []
    finally:
        await rooms.aclose()
        await redis.aclose()


class _SlowPipelines:
    """The Redis client, with pipelines holding ``command`` that wait ``before_s`` before they
    are sent and ``after_s`` before their caller hears back (a slow pool connection)."""

    def __init__(self, redis: Redis, command: str, before_s: float, after_s: float = 0.0) -> None:
        self._redis = redis
        self._command = command
        self._before_s = before_s
        self._after_s = after_s

    def __getattr__(self, name: str) -> object:
        return getattr(self._redis, name)

    def pipeline(self, *args: object, **kwargs: object) -> object:
        pipe = self._redis.pipeline(*args, **kwargs)
        execute = pipe.execute
        slow = self

        async def slow_execute(*a: object, **kw: object) -> object:
            if not any(cmd[0][0] == slow._command for cmd in pipe.command_stack):
                return await execute(*a, **kw)
            await asyncio.sleep(slow._before_s)
            out = await execute(*a, **kw)
            await asyncio.sleep(slow._after_s)
            return out

        pipe.execute = slow_execute  # type: ignore[method-assign]
        return pipe


async def _routed_until(redis: Redis, keys: Keys, done: asyncio.Future[object]) -> list[set[str]]:
    """The room's instances, read every 5 ms until ``done``."""
    seen = [await redis.smembers(keys.room("r", "insts"))]
    while not done.done():
        await asyncio.sleep(0.005)
        seen.append(await redis.smembers(keys.room("r", "insts")))
    return seen


async def test_a_late_removal_does_not_unroute_a_room_attached_again(redis_server, redis_prefix) -> None:
    """The last local member leaves (SREM from the room's instances) while a resuming member
    attaches (SADD): when the SREM reached Redis last, the room's moves stopped coming to this
    instance (a mass drop and resume left whole rooms silent on one instance, then, with the
    instance added back after the SREM, a soak's resumes missed the moves published between
    the two: seq gaps). Once attach returns, the room is routed here, and stays so."""
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(redis_prefix)
    rooms = RedisRoomStore(redis, keys, Relay(), instance_id="gw-1")
    rooms._r = _SlowPipelines(redis, "SREM", before_s=0.2, after_s=0.2)
    try:
        await rooms.attach("r", "old-sid")
        leaving = asyncio.create_task(rooms.detach("r", "old-sid"))
        await asyncio.sleep(0.05)  # the removal is on its way
        await rooms.attach("r", "new-sid")
        seen = await _routed_until(redis, keys, leaving)
        assert all(s == {"gw-1"} for s in seen), seen
        assert await redis.smembers(keys.room("r", "insts")) == {"gw-1"}
        assert await redis.smembers(keys.inst_rooms("gw-1")) == {"r"}
    finally:
        await rooms.aclose()
        await redis.aclose()


async def test_a_second_attach_returns_once_the_room_is_routed(redis_server, redis_prefix) -> None:
    """Two members attach at once: the second one returned at once, before the first one's SADD
    had reached Redis, and its resume read the room's log while the room's moves did not come
    here yet (the moves in between reached nobody)."""
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(redis_prefix)
    rooms = RedisRoomStore(redis, keys, Relay(), instance_id="gw-1")
    rooms._r = _SlowPipelines(redis, "SADD", before_s=0.2)
    try:
        first = asyncio.create_task(rooms.attach("r", "sid-1"))
        await asyncio.sleep(0.05)
        await rooms.attach("r", "sid-2")
        assert await redis.smembers(keys.room("r", "insts")) == {"gw-1"}
        await first
        await rooms.detach("r", "sid-1")
        await rooms.detach("r", "sid-2")
        assert await redis.smembers(keys.room("r", "insts")) == set()
        assert rooms._routing == {}  # the per-room locks go with their last user
    finally:
        await rooms.aclose()
        await redis.aclose()


async def test_the_redis_store_defaults_to_100_members_and_1000_moves(redis_server, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisRoomStore(redis, Keys(redis_prefix), Relay(), instance_id="gw-1")
    try:
        for i in range(100):
            await store.join("big", f"u{i}", f"s{i}")
        with pytest.raises(ActionError) as refused:
            await store.join("big", "one-too-many", "s-last")
        assert (refused.value.code, refused.value.message) == (AckCode.ROOM_FULL, "room 'big' has 100 members")
        for i in range(1001):
            await store.move("big", "u0", {"i": i}, orjson.dumps({"i": i}).decode(), i)
        events, complete = await store.events_after("big", 0)
        assert (events[0].seq, len(events), complete) == (2, 1000, False)
    finally:
        await store.aclose()
        await redis.aclose()
