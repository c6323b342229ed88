"""Rooms: seq, the move log, the state and forgetting a room, one suite over both stores.

Every test in the first part runs over :class:`MemoryRoomStore` and :class:`RedisRoomStore`
(the ``stores`` fixture builds either, with the rules and sizes a test asks for). The second
part is the Redis store's own: the compare-and-set of the state between instances, and
:meth:`RedisRoomStore.reassert` after Redis lost its data. The memory store has neither: its
methods never await, so one room's moves cannot interleave (nothing to compare), and its rooms
live as long as the process does (nothing is lost that could be put back).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from gamegw.games import Game, IllegalMove
from gamegw.server.protocol.codes import AckCode
from gamegw.server.protocol.errors import ActionError, StoreUnavailable
from gamegw.server.rules import Arena, GameRules, Relay, Rules, State
from gamegw.server.state.keys import Keys
from gamegw.server.state.pipe import RedisPipe
from gamegw.server.state.redis_link import RedisLink
from gamegw.server.state.redis_url import parse_redis_url
from gamegw.server.state.rooms import MemoryRoomStore, MoveEvent, RoomStore
from gamegw.server.state.rooms_redis import CAS_RETRIES, RedisRoomStore
from tests.conftest import RedisServer, eventually

Make = Callable[..., Awaitable[RoomStore]]
TS = 1_700_000_000_000


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Make]:
    """Builds room stores of the parametrised kind. Redis stores share one prefix: two of them
    are two instances of one cluster; a second memory store is a separate process."""
    opened: list[RoomStore] = []
    clients: list[Redis] = []

    async def make(rules: Rules, *, log_size: int = 1000, max_members: int = 100,
                   instance_id: str = "gw-1") -> RoomStore:
        store: RoomStore
        if request.param == "memory":
            store = MemoryRoomStore(rules, log_size=log_size, max_members=max_members)
        else:
            redis = Redis.from_url(request.getfixturevalue("redis_server").url, decode_responses=True)
            clients.append(redis)
            store = RedisRoomStore(redis, Keys(redis_prefix), rules, instance_id=instance_id, log_size=log_size,
                                   max_members=max_members)
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()
    for client in clients:
        await client.aclose()


async def move(rooms: RoomStore, room: str, user: str, action: dict[str, Any], ts: int = TS) -> MoveEvent:
    return await rooms.move(room, user, action, orjson.dumps(action).decode(), ts)


def wire(room: str, seq: int, user: str, action: dict[str, Any], ts: int = TS) -> str:
    """The move payload, written out by hand (not with the code under test)."""
    return (f'{{"room":"{room}","seq":{seq},"user":"{user}","action":{orjson.dumps(action).decode()},'
            f'"ts":{ts}}}')


def seqs(events: list[MoveEvent]) -> list[int]:
    return [e.seq for e in events]


class TestSeq:
    async def test_each_accepted_move_gets_the_next_seq_of_its_room(self, stores: Make) -> None:
        rooms = await stores(Relay())
        assert await rooms.seq("r") == 0
        await rooms.join("r", "alice", "s-a")
        await rooms.join("q", "alice", "s-a")
        got = [await move(rooms, "r", "alice", {"n": n}, TS + n) for n in range(3)]
        assert [(e.seq, e.json) for e in got] == [(n + 1, wire("r", n + 1, "alice", {"n": n}, TS + n))
                                                  for n in range(3)]
        assert got[0].wire() == {"room": "r", "seq": 1, "user": "alice", "action": {"n": 0}, "ts": TS}
        other = await move(rooms, "q", "alice", {"n": 9})  # another room counts from 1 on its own
        assert (other.seq, other.json) == (1, wire("q", 1, "alice", {"n": 9}))
        assert (await rooms.seq("r"), await rooms.seq("q"), await rooms.seq("elsewhere")) == (3, 1, 0)

    async def test_a_join_is_told_the_rooms_seq(self, stores: Make) -> None:
        rooms = await stores(Relay())
        first = await rooms.join("r", "alice", "s-a")
        assert (first.seq, first.members, first.first) == (0, ["alice"], True)
        for n in range(4):
            await move(rooms, "r", "alice", {"n": n})
        second = await rooms.join("r", "bob", "s-b")
        assert (second.seq, sorted(second.members), second.first) == (4, ["alice", "bob"], True)

    async def test_a_refused_move_takes_no_seq(self, stores: Make) -> None:
        rooms = await stores(Arena(width=2, height=2))
        await rooms.join("r", "alice", "s-a")  # seated at (0, 0)
        with pytest.raises(ActionError) as outsider:
            await move(rooms, "r", "bob", {"dir": "down"})
        assert (outsider.value.code, outsider.value.message) == (AckCode.NOT_IN_ROOM, "not in room 'r'")
        with pytest.raises(ActionError) as off_grid:
            await move(rooms, "r", "alice", {"dir": "up"})
        assert (off_grid.value.code, off_grid.value.message) == (AckCode.INVALID_ACTION,
                                                                 "(0, -1) is off the 2x2 grid")
        assert await rooms.seq("r") == 0
        assert (await move(rooms, "r", "alice", {"dir": "down"})).seq == 1

    async def test_a_relay_move_of_a_non_member_is_refused(self, stores: Make) -> None:
        rooms = await stores(Relay())
        await rooms.join("r", "alice", "s-a")
        with pytest.raises(ActionError) as outsider:
            await move(rooms, "r", "bob", {"n": 1})
        assert (outsider.value.code, outsider.value.message) == (AckCode.NOT_IN_ROOM, "not in room 'r'")
        assert await rooms.seq("r") == 0

    async def test_moves_racing_from_two_players_get_seqs_without_gaps(self, stores: Make) -> None:
        """Ten moves at once, alice's through one store and bob's through another (two
        instances on Redis, which then conflict on the state's version and retry): every move
        is applied once, seqs 1..10, and the state is what the moves say, in seq order."""
        a = await stores(Arena(width=4, height=8))
        b = a if isinstance(a, MemoryRoomStore) else await stores(Arena(width=4, height=8), instance_id="gw-2")
        await a.join("r", "alice", "s-a")  # (0, 0)
        await b.join("r", "bob", "s-b")  # (1, 0)
        events = await asyncio.gather(*(move(a, "r", "alice", {"dir": "down"}) for _ in range(5)),
                                      *(move(b, "r", "bob", {"dir": "down"}) for _ in range(5)))
        assert sorted(seqs(list(events))) == list(range(1, 11))
        by_seq = sorted(events, key=lambda e: e.seq)
        walked = {"alice": 0, "bob": 0}
        for e in by_seq:  # each player's positions come in seq order, one step each
            payload = e.wire()
            walked[payload["user"]] += 1
            x = 0 if payload["user"] == "alice" else 1
            assert payload["action"] == {"dir": "down", "pos": [x, walked[payload["user"]]]}, by_seq
        assert await a.state("r") == (10, {"width": 4, "height": 8, "players": {"alice": [0, 5], "bob": [1, 5]}})
        assert seqs((await a.events_after("r", 0))[0]) == list(range(1, 11))


class TestLog:
    async def test_events_after_a_seq_are_the_later_moves_in_order(self, stores: Make) -> None:
        rooms = await stores(Relay(), log_size=3)
        await rooms.join("r", "alice", "s-a")
        for n in range(1, 6):
            await move(rooms, "r", "alice", {"n": n}, TS + n)
        expected = {n: MoveEvent(n, wire("r", n, "alice", {"n": n}, TS + n)) for n in range(1, 6)}
        # the log keeps the last 3 moves (3, 4, 5): it reaches back to after_seq 2
        assert await rooms.events_after("r", 4) == ([expected[5]], True)
        assert await rooms.events_after("r", 3) == ([expected[4], expected[5]], True)
        assert await rooms.events_after("r", 2) == ([expected[3], expected[4], expected[5]], True)
        assert await rooms.events_after("r", 1) == ([expected[3], expected[4], expected[5]], False)
        assert await rooms.events_after("r", 0) == ([expected[3], expected[4], expected[5]], False)
        # nothing after the last seq (or beyond it), and nothing in a room nobody is in
        assert await rooms.events_after("r", 5) == ([], True)
        assert await rooms.events_after("r", 9) == ([], True)
        assert await rooms.events_after("elsewhere", 0) == ([], True)

    async def test_the_log_stays_bounded_as_moves_go_on(self, stores: Make) -> None:
        rooms = await stores(Relay(), log_size=4)
        await rooms.join("r", "alice", "s-a")
        for n in range(1, 4):
            await move(rooms, "r", "alice", {"n": n})
        assert await rooms.events_after("r", 0) == ([MoveEvent(n, wire("r", n, "alice", {"n": n}))
                                                     for n in range(1, 4)], True)  # not full yet
        for n in range(4, 31):
            await move(rooms, "r", "alice", {"n": n})
        events, complete = await rooms.events_after("r", 0)
        assert (seqs(events), complete) == ([27, 28, 29, 30], False)
        assert await rooms.events_after("r", 26) == (events, True)
        assert await rooms.events_after("r", 25) == (events, False)


class TestState:
    async def test_the_state_of_a_room_nobody_joined_is_the_initial_one(self, stores: Make) -> None:
        assert await (await stores(Relay())).state("r") == (0, {"players": []})
        assert await (await stores(Arena(width=3, height=2))).state("r") == (0, {"width": 3, "height": 2,
                                                                                  "players": {}})

    async def test_relay_state_is_who_plays_and_comes_with_the_seq(self, stores: Make) -> None:
        rooms = await stores(Relay())
        await rooms.join("r", "alice", "s-a")
        await rooms.join("r", "bob", "s-b")
        await rooms.join("r", "alice", "s-a2")  # a second session: still one player
        assert await rooms.state("r") == (0, {"players": ["alice", "bob"]})
        await move(rooms, "r", "bob", {"any": ["thing"]})
        await move(rooms, "r", "alice", {})
        assert await rooms.state("r") == (2, {"players": ["alice", "bob"]})
        assert await rooms.leave("r", "alice", "s-a") is False  # alice still sits through s-a2
        assert await rooms.state("r") == (2, {"players": ["alice", "bob"]})
        assert await rooms.leave("r", "alice", "s-a2") is True
        assert await rooms.state("r") == (2, {"players": ["bob"]})

    async def test_arena_state_follows_joins_moves_and_leaves(self, stores: Make) -> None:
        rooms = await stores(Arena(width=3, height=2))
        await rooms.join("r", "alice", "s-a")
        await rooms.join("r", "bob", "s-b")
        assert await rooms.state("r") == (0, {"width": 3, "height": 2, "players": {"alice": [0, 0], "bob": [1, 0]}})
        stepped = await move(rooms, "r", "alice", {"dir": "down"})
        assert stepped.json == wire("r", 1, "alice", {"dir": "down", "pos": [0, 1]})  # the action as applied
        assert (await move(rooms, "r", "bob", {"dir": "left"})).seq == 2  # onto (0, 0), free again
        after_two = (2, {"width": 3, "height": 2, "players": {"alice": [0, 1], "bob": [0, 0]}})
        assert await rooms.state("r") == after_two
        with pytest.raises(ActionError) as taken:
            await move(rooms, "r", "alice", {"dir": "up"})
        assert (taken.value.code, taken.value.message) == (AckCode.INVALID_ACTION, "(0, 0) is taken")
        assert await rooms.state("r") == after_two  # a refused move changes nothing
        assert await rooms.leave("r", "bob", "s-b")
        await rooms.join("r", "carol", "s-c")  # the first free cell in reading order: bob's
        assert await rooms.state("r") == (2, {"width": 3, "height": 2, "players": {"alice": [0, 1], "carol": [0, 0]}})

    async def test_a_join_the_rules_refuse_seats_nobody(self, stores: Make) -> None:
        rooms = await stores(Arena(width=1, height=1))
        await rooms.join("r", "alice", "s-a")
        with pytest.raises(ActionError) as full:
            await rooms.join("r", "bob", "s-b")
        assert (full.value.code, full.value.message) == (AckCode.ROOM_FULL, "the arena has no free cell")
        assert await rooms.members("r") == ["alice"]
        assert await rooms.state("r") == (0, {"width": 1, "height": 1, "players": {"alice": [0, 0]}})
        with pytest.raises(ActionError) as outsider:
            await move(rooms, "r", "bob", {"dir": "up"})
        assert outsider.value.code == AckCode.NOT_IN_ROOM


class TestForget:
    async def test_when_the_last_member_leaves_the_room_is_forgotten(self, stores: Make) -> None:
        rooms = await stores(Relay())
        await rooms.join("r", "alice", "s-a")
        await rooms.join("r", "bob", "s-b")
        for n in range(3):
            await move(rooms, "r", "bob", {"n": n})
        assert await rooms.leave("r", "bob", "s-b")
        assert (await rooms.seq("r"), await rooms.members("r")) == (3, ["alice"])  # alice keeps the room
        assert seqs((await rooms.events_after("r", 0))[0]) == [1, 2, 3]
        assert await rooms.leave("r", "alice", "s-a")
        assert (await rooms.seq("r"), await rooms.members("r")) == (0, [])
        assert await rooms.events_after("r", 0) == ([], True)
        assert await rooms.state("r") == (0, {"players": []})
        again = await rooms.join("r", "carol", "s-c")
        assert (again.seq, again.members, again.first) == (0, ["carol"], True)
        assert await move(rooms, "r", "carol", {"n": 0}) == MoveEvent(1, wire("r", 1, "carol", {"n": 0}))
        assert await rooms.events_after("r", 0) == ([MoveEvent(1, wire("r", 1, "carol", {"n": 0}))], True)
        assert await rooms.state("r") == (1, {"players": ["carol"]})

    async def test_arena_seats_start_over_in_a_forgotten_room(self, stores: Make) -> None:
        rooms = await stores(Arena(width=2, height=2))
        await rooms.join("r", "alice", "s-a")
        await move(rooms, "r", "alice", {"dir": "right"})
        await rooms.leave("r", "alice", "s-a")
        await rooms.join("r", "bob", "s-b")
        assert await rooms.state("r") == (0, {"width": 2, "height": 2, "players": {"bob": [0, 0]}})


class CountingArena(Arena):
    """An arena that counts what its rules are asked."""

    def __init__(self) -> None:
        super().__init__(width=2, height=2)
        self.asked = 0

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        self.asked += 1
        return super().apply(state, user_id, action)


class TestPublish:
    """A server event (``POST /admin/publish``): a move from someone who need not be a member,
    unseen by the rules, in the same seq, log and routing as the players' moves."""

    async def test_a_published_event_takes_the_next_seq_and_is_logged(self, stores: Make) -> None:
        rules = CountingArena()
        rooms = await stores(rules)
        await rooms.join("r", "alice", "s-a")
        assert (await move(rooms, "r", "alice", {"dir": "down"})).seq == 1
        published = await rooms.publish("r", "ops", '{"storm":true}', TS + 1)
        assert published is not None
        assert (published.seq, published.json) == (2, wire("r", 2, "ops", {"storm": True}, TS + 1))
        assert rules.asked == 1  # the rules saw alice's move only
        assert (await move(rooms, "r", "alice", {"dir": "right"})).seq == 3
        events, complete = await rooms.events_after("r", 1)
        assert complete and [e.wire()["user"] for e in events] == ["ops", "alice"]
        seq, state = await rooms.state("r")
        assert (seq, state["players"]) == (3, {"alice": [1, 1]})  # the two steps, nothing else
        assert await rooms.members("r") == ["alice"]  # the publisher took no seat

    async def test_a_room_without_members_takes_no_event(self, stores: Make) -> None:
        rooms = await stores(Relay())
        assert await rooms.publish("nowhere", "ops", "{}", TS) is None
        await rooms.join("r", "alice", "s-a")
        await rooms.leave("r", "alice", "s-a")
        assert await rooms.publish("r", "ops", "{}", TS) is None
        assert await rooms.seq("r") == 0 and await rooms.seq("nowhere") == 0
        assert (await rooms.join("r", "bob", "s-b")).seq == 0  # nothing was left behind


# The Redis store's own: the compare-and-set of the state, and recovery after an outage.


class Interleaved(Arena):
    """The arena, where "another instance" writes the room's state between this store's read
    of the state and its compare-and-set, the first ``times`` times a move is applied: it puts
    bob on ``bob_to`` and bumps the state's version, as another instance's move would."""

    def __init__(self, url: str, keys: Keys, *, times: int, bob_to: list[int]) -> None:
        super().__init__(width=3, height=3)
        self._url, self._keys, self._left, self._bob_to = url, keys, times, bob_to
        self.applied = 0

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        self.applied += 1
        if self._left > 0:
            self._left -= 1
            with redis_sync.Redis.from_url(self._url, decode_responses=True) as other:
                stored = orjson.loads(other.get(self._keys.room("r", "state")) or "{}")
                stored["players"]["bob"] = self._bob_to
                other.set(self._keys.room("r", "state"), orjson.dumps(stored))
                other.incr(self._keys.room("r", "ver"))
        return super().apply(state, user_id, action)


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    yield redis
    await redis.aclose()


async def interleaved_room(redis: Redis, url: str, keys: Keys, **kw: Any) -> tuple[RedisRoomStore, Interleaved]:
    rules = Interleaved(url, keys, **kw)
    rooms = RedisRoomStore(redis, keys, rules, instance_id="gw-1")
    await rooms.join("r", "alice", "s-a")  # (0, 0); the state's version is 1
    await rooms.join("r", "bob", "s-b")  # (1, 0); version 2
    assert await redis.get(keys.room("r", "ver")) == "2"
    return rooms, rules


class TestCompareAndSet:
    async def test_a_move_whose_state_changed_meanwhile_is_applied_again_to_the_new_state(
            self, redis_server: RedisServer, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms, rules = await interleaved_room(redis_client, redis_server.url, keys, times=1, bob_to=[2, 2])
        event = await move(rooms, "r", "alice", {"dir": "down"})
        assert event == MoveEvent(1, wire("r", 1, "alice", {"dir": "down", "pos": [0, 1]}))
        assert rules.applied == 2  # refused by the version check once, then applied to the new state
        assert await rooms.state("r") == (1, {"width": 3, "height": 3, "players": {"alice": [0, 1], "bob": [2, 2]}})
        assert await redis_client.get(keys.room("r", "ver")) == "4"  # the other writer's 3, this move's 4
        await rooms.aclose()

    async def test_a_move_made_illegal_by_the_change_is_refused(
            self, redis_server: RedisServer, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms, rules = await interleaved_room(redis_client, redis_server.url, keys, times=1, bob_to=[0, 1])
        with pytest.raises(ActionError) as taken:
            await move(rooms, "r", "alice", {"dir": "down"})
        assert (taken.value.code, taken.value.message) == (AckCode.INVALID_ACTION, "(0, 1) is taken")
        assert rules.applied == 2
        assert await rooms.state("r") == (0, {"width": 3, "height": 3, "players": {"alice": [0, 0], "bob": [0, 1]}})
        assert await redis_client.get(keys.room("r", "ver")) == "3"
        await rooms.aclose()

    async def test_a_room_changing_under_every_try_answers_unavailable(
            self, redis_server: RedisServer, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms, rules = await interleaved_room(redis_client, redis_server.url, keys, times=CAS_RETRIES,
                                              bob_to=[2, 2])
        with pytest.raises(ActionError) as busy:
            await move(rooms, "r", "alice", {"dir": "down"})
        assert (busy.value.code, busy.value.message) == (AckCode.UNAVAILABLE, "the room is too busy, retry")
        assert rules.applied == CAS_RETRIES == 20
        assert await rooms.events_after("r", 0) == ([], True)
        assert await rooms.state("r") == (0, {"width": 3, "height": 3, "players": {"alice": [0, 0], "bob": [2, 2]}})
        assert await redis_client.get(keys.room("r", "ver")) == str(2 + CAS_RETRIES)
        assert (await move(rooms, "r", "alice", {"dir": "down"})).seq == 1  # the room is quiet again
        await rooms.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, without persistence: stopped and started, it is empty."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def fails_fast(url: str) -> Redis:
    """A client that reports a stopped server at once (one immediate retry, as the app's)."""
    return Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 1), socket_connect_timeout=2)


class TestReassert:
    async def test_redis_back_empty_gets_the_seats_routing_seq_and_offline_moves(
            self, own_redis: RedisServer, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        redis, other_redis = fails_fast(own_redis.url), fails_fast(own_redis.url)
        rooms = RedisRoomStore(redis, keys, Relay(), instance_id="gw-1", log_size=10)
        other = RedisRoomStore(other_redis, keys, Relay(), instance_id="gw-2")
        heard: list[tuple[str, MoveEvent]] = []

        async def offline_move(room: str, event: MoveEvent) -> None:
            heard.append((room, event))

        rooms.on_offline_move = offline_move
        try:
            for user in ("alice", "bob"):
                await rooms.join("r", user, f"s-{user[0]}")
                await rooms.attach("r", f"sid-{user[0]}")
            for n in range(1, 4):
                await move(rooms, "r", "alice", {"n": n})
            await rooms.join("span", "alice", "s-a")  # a room with a member on gw-2 as well
            await rooms.attach("span", "sid-a")
            await other.join("span", "dave", "s-d")
            await other.attach("span", "sid-d")
            assert (await move(rooms, "span", "alice", {"n": 1})).seq == 1  # which tells gw-1 the room spans

            own_redis.stop()
            offline = [await move(rooms, "r", "bob", {"n": 4}), await move(rooms, "r", "alice", {"n": 5})]
            assert offline == [MoveEvent(4, wire("r", 4, "bob", {"n": 4})),
                               MoveEvent(5, wire("r", 5, "alice", {"n": 5}))]
            assert heard == [("r", offline[0]), ("r", offline[1])] and rooms.down
            with pytest.raises(StoreUnavailable):  # no cluster-wide seq for a room that spans instances
                await move(rooms, "span", "alice", {"n": 2})

            own_redis.start()  # empty
            seats = {"r": {"s-a": "alice", "s-b": "bob"}, "span": {"s-a": "alice"}}
            assert await rooms.reassert(seats, {"r": 3, "span": 1}) == {"r": 2, "span": 0}
            assert not rooms.down
            assert await rooms.seq("r") == 5 and await rooms.seq("span") == 1
            assert sorted(await rooms.members("r")) == ["alice", "bob"]
            assert await redis.hgetall(keys.room("r", "seats")) == {"s-a": "alice", "s-b": "bob"}
            assert await redis.hgetall(keys.room("r", "users")) == {"alice": "1", "bob": "1"}
            assert await redis.smembers(keys.room("r", "insts")) == {"gw-1"}
            assert await redis.smembers(keys.inst_rooms("gw-1")) == {"r", "span"}
            assert await rooms.events_after("r", 3) == (offline, True)
            assert await rooms.events_after("r", 0) == (offline, False)  # moves 1-3 went with the data
            assert await rooms.state("r") == (5, {"players": ["alice", "bob"]})

            assert await move(rooms, "r", "bob", {"n": 6}) == MoveEvent(6, wire("r", 6, "bob", {"n": 6}))
            assert len(heard) == 2  # online again
            assert await rooms.reassert(seats, {"r": 6, "span": 1}) == {"r": 0, "span": 0}  # twice: no change
            assert await redis.hgetall(keys.room("r", "users")) == {"alice": "1", "bob": "1"}
            assert await rooms.seq("r") == 6
            assert seqs((await rooms.events_after("r", 0))[0]) == [4, 5, 6]
        finally:
            await rooms.aclose()
            await other.aclose()
            await redis.aclose()
            await other_redis.aclose()

    @pytest.mark.parametrize(("redis_seq", "delivered", "expected"), [
        (None, 0, 2),  # back empty: the seq this instance's joins and moves returned
        (None, 7, 7),  # back empty: the seq the bus delivered here (moves of the other instance's players)
        (9, 7, 9),  # back with its data (or ahead): never lowered
    ])
    async def test_the_seq_after_a_reassert_is_never_below_one_given_out(
            self, redis_client: Redis, redis_prefix: str, redis_seq: int | None, delivered: int,
            expected: int) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        await rooms.join("r", "alice", "s-a")
        await rooms.attach("r", "sid-a")
        await move(rooms, "r", "alice", {"n": 1})
        await move(rooms, "r", "alice", {"n": 2})
        await redis_client.delete(*[k async for k in redis_client.scan_iter(match=f"{redis_prefix}:*")])
        if redis_seq is not None:
            await redis_client.set(keys.room("r", "seq"), redis_seq)
        assert await rooms.reassert({"r": {"s-a": "alice"}}, {"r": delivered}) == {"r": 0}
        assert await rooms.seq("r") == expected
        assert (await move(rooms, "r", "alice", {"n": 3})).seq == expected + 1
        await rooms.aclose()

    @pytest.mark.parametrize("seated_here", [True, False], ids=["seated", "gone"])
    async def test_moves_are_counted_lost_only_in_a_room_still_seated_here(
            self, redis_client: Redis, redis_prefix: str, seated_here: bool) -> None:
        """A room whose seq Redis no longer has lost the moves this instance saw, if players here
        still sit in it; a room this instance no longer seats anyone in (its last leave or the
        sweep deleted it while Redis was flagged down) lost nothing: measured under a failover
        with redis_wait_replicas=1, its floor counted as 'lost' moves in 36 emptied rooms."""
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        counted: list[tuple[str, int]] = []
        rooms.on_moves_lost = lambda room, lost: counted.append((room, lost))
        await rooms.join("r", "alice", "s-a")
        await rooms.attach("r", "sid-a")
        for n in range(3):
            await move(rooms, "r", "alice", {"n": n})
        await redis_client.delete(*[k async for k in redis_client.scan_iter(match=f"{redis_prefix}:*")])
        seats = {"r": {"s-a": "alice"}} if seated_here else {}
        await rooms.reassert(seats, {"r": 3})
        assert counted == ([("r", 3)] if seated_here else [])
        await rooms.aclose()

    @pytest.mark.parametrize(("kept", "offline", "lost"), [
        (2, 2, 3),  # a failover kept seqs 1-2 of 5; 6 and 7 were played offline: 3, 4 and 5 are lost
        (4, 0, 1),  # kept 1-4 of 5: one lost
        (5, 1, 0),  # kept everything; an outage's offline move: nothing lost, nothing reported
    ])
    async def test_the_moves_lost_are_counted_exactly(
            self, redis_client: Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture, kept: int,
            offline: int, lost: int) -> None:
        """What a failover lost: the seq floor this instance knows, less what Redis kept, less the
        moves played offline (written back, not lost). Kills the mutants of that sum and of its
        ``lost > 0`` (one lost, none lost), and of the ``moves_lost`` line."""
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        counted: list[tuple[str, int]] = []
        rooms.on_moves_lost = lambda room, n: counted.append((room, n))
        caplog.set_level(logging.WARNING, logger="gamegw.rooms")
        try:
            await alice_in(rooms, "r")
            for n in range(1, 6):
                await move(rooms, "r", "alice", {"n": n})
            await redis_client.set(keys.room("r", "seq"), kept)  # the replica promoted lacked the newest writes
            await redis_client.xtrim(keys.room("r", "log"), minid=f"{kept + 1}-1")
            await redis_client.xtrim(keys.room("r", "log"), maxlen=kept)
            rooms.lost()
            played = [await move(rooms, "r", "alice", {"n": 6 + i}) for i in range(offline)]
            assert seqs(played) == list(range(6, 6 + offline))
            assert await rooms.reassert({"r": {"s-a": "alice"}}, {}) == {"r": offline}
            assert counted == ([("r", lost)] if lost else [])
            lines = [r for r in caplog.records if r.getMessage() == "moves_lost"]
            assert [r.gamegw_fields for r in lines] == (  # type: ignore[attr-defined]
                [{"room": "r", "redis_seq": kept, "seq": 5 + offline, "lost": lost}] if lost else [])
        finally:
            await rooms.aclose()

    @pytest.mark.parametrize("redis_seq", [2, 3, 4])
    async def test_an_offline_move_whose_seq_redis_already_holds_is_logged_as_a_conflict(
            self, redis_client: Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture, redis_seq: int) -> None:
        keys = Keys(redis_prefix)
        rooms = await alice_in(RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1"), "r")
        caplog.set_level(logging.WARNING, logger="gamegw.rooms")
        try:
            for n in (1, 2):
                await move(rooms, "r", "alice", {"n": n})
            rooms.lost()
            assert (await move(rooms, "r", "alice", {"n": 3})).seq == 3
            await redis_client.set(keys.room("r", "seq"), redis_seq)
            await rooms.reassert({"r": {"s-a": "alice"}}, {})
            lines = [r.gamegw_fields for r in caplog.records  # type: ignore[attr-defined]
                     if r.getMessage() == "offline_conflict"]
            assert lines == ([] if redis_seq == 2 else [{"room": "r", "redis_seq": redis_seq, "offline_from": 3}])
        finally:
            await rooms.aclose()

    async def test_a_room_seated_here_but_not_attached_gets_no_routing_to_this_instance(
            self, redis_client: Redis, redis_prefix: str) -> None:
        """Routing names the instances with a live member in the room (an attach); a seat alone
        (a session that lists the room) puts the seat back, not the routing, and a later attach
        routes it. Kills the mutants of the REASSERT's instance argument and of ``if args[0]``
        (the room counted as routed here, which the attach then skipped)."""
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        try:
            await rooms.join("r", "alice", "s-a")
            rooms.lost()
            assert await rooms.reassert({"r": {"s-a": "alice"}}, {}) == {"r": 0}
            assert await rooms.seq("r") == 0  # no move yet: the floor is 0 (nothing given out, nothing delivered)
            assert await redis_client.hgetall(keys.room("r", "seats")) == {"s-a": "alice"}
            assert await redis_client.smembers(keys.room("r", "insts")) == set()
            assert await redis_client.smembers(keys.inst_rooms("gw-1")) == set()
            await rooms.attach("r", "sid-a")  # and the routing comes with the first attach
            assert await redis_client.smembers(keys.room("r", "insts")) == {"gw-1"}
        finally:
            await rooms.aclose()

    async def test_arena_players_are_seated_again_when_redis_came_back_empty(
            self, own_redis: RedisServer, redis_prefix: str) -> None:
        """A game whose moves change the state cannot play offline, and its state (where each
        player stands) goes with Redis' data: the players seated through this instance get a
        cell again, so that their moves are checked against a state that knows them."""
        keys = Keys(redis_prefix)
        redis = fails_fast(own_redis.url)
        rooms = RedisRoomStore(redis, keys, Arena(width=3, height=3), instance_id="gw-1")
        try:
            for user in ("alice", "bob"):
                await rooms.join("r", user, f"s-{user[0]}")
                await rooms.attach("r", f"sid-{user[0]}")
            await move(rooms, "r", "bob", {"dir": "down"})  # bob to (1, 1)
            own_redis.stop()
            with pytest.raises(StoreUnavailable):
                await move(rooms, "r", "alice", {"dir": "down"})
            own_redis.start()  # empty
            assert await rooms.reassert({"r": {"s-a": "alice", "s-b": "bob"}}, {"r": 1}) == {"r": 0}
            assert await rooms.state("r") == (1, {"width": 3, "height": 3, "players": {"alice": [0, 0], "bob": [1, 0]}})
            assert await move(rooms, "r", "alice", {"dir": "down"}) == MoveEvent(
                2, wire("r", 2, "alice", {"dir": "down", "pos": [0, 1]}))
        finally:
            await rooms.aclose()
            await redis.aclose()


class Held:
    """Holds each call of the wrapped Redis scripts until the test lets it go: a recovery stops
    before each of its round trips, and the test plays moves in between. (Joins set the state:
    wrap ``_set_state`` once they are done.)"""

    def __init__(self, rooms: RedisRoomStore, *scripts: str) -> None:
        self.waiting: list[tuple[str, asyncio.Future[None]]] = []  # (the room a held call is for, its go)
        self.arrived = asyncio.Event()
        for name in scripts:
            monkey(rooms, name, self._wrap(name, getattr(rooms, name)))

    def _wrap(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def held(*, keys: list[str], args: list[str]) -> Any:
            go = asyncio.get_running_loop().create_future()
            self.waiting.append((keys[0] if name == "_set_state" else args[1], go))
            self.arrived.set()
            await go
            return await call(keys=keys, args=args)

        return held

    async def next(self, task: asyncio.Task[Any]) -> str | None:
        """Wait until ``task`` is held again (what for: the room of a REASSERT, the state key of a
        SET_STATE) or done (None)."""
        while not self.waiting and not task.done():
            arrived = asyncio.ensure_future(self.arrived.wait())
            await asyncio.wait([arrived, task], return_when=asyncio.FIRST_COMPLETED)
            arrived.cancel()
            self.arrived.clear()
        return self.waiting[0][0] if self.waiting else None

    async def release(self, task: asyncio.Task[Any]) -> str | None:
        """Let the call ``task`` is held at (once it is) go on; what it is held for next."""
        if await self.next(task) is not None:
            self.waiting.pop(0)[1].set_result(None)
        return await self.next(task)

    async def finish(self, task: asyncio.Task[Any]) -> Any:
        while await self.release(task) is not None:
            pass
        return await task


async def alice_in(rooms: RedisRoomStore, *names: str) -> RedisRoomStore:
    """Seats alice (session ``s-a``) in these rooms, through this instance."""
    for room in names:
        await rooms.join(room, "alice", "s-a")
        await rooms.attach(room, f"sid-{room}")
    return rooms


def monkey(rooms: RedisRoomStore, name: str, call: Callable[..., Awaitable[Any]]) -> None:
    rooms.__dict__[name] = call


class TestReassertUnderPlay:
    """:meth:`RedisRoomStore.reassert` awaits Redis room by room while players go on moving: a
    room not yet re-asserted plays offline (and what it plays then is written back too), a room
    already re-asserted plays online at once."""

    async def test_a_move_played_while_its_room_is_put_back_is_written_back_too(
            self, redis_client: Redis, redis_prefix: str) -> None:
        """Seen in a Sentinel failover test: a move accepted offline while its room's REASSERT was
        on its way was acknowledged, then dropped unwritten; the next move online got its seq
        again. Kills the fix's mutants that write back only what the first pass saw."""
        rooms = RedisRoomStore(redis_client, Keys(redis_prefix), Relay(), instance_id="gw-1")
        try:
            for user in ("alice", "bob"):
                await rooms.join("r", user, f"s-{user[0]}")
                await rooms.attach("r", f"sid-{user[0]}")
            held = Held(rooms, "_reassert", "_set_state")
            played = [await move(rooms, "r", "alice", {"n": 1})]
            rooms.lost()
            played.append(await move(rooms, "r", "bob", {"n": 2}))  # offline
            task = asyncio.create_task(rooms.reassert({"r": {"s-a": "alice", "s-b": "bob"}}, {}))
            assert await held.next(task) == "r"  # its REASSERT, with move 2, is on its way
            played.append(await move(rooms, "r", "alice", {"n": 3}))  # offline still
            state = Keys(redis_prefix).room("r", "state")
            assert await held.release(task) == state  # on_join for alice
            played.append(await move(rooms, "r", "bob", {"n": 4}))  # offline still
            assert await held.release(task) == state  # and for bob
            assert await held.release(task) == "r"  # a second pass: moves 3 and 4
            assert await held.finish(task) == {"r": 3}
            played.append(await move(rooms, "r", "alice", {"n": 5}))  # online
            assert played == [MoveEvent(n, wire("r", n, "alice" if n % 2 else "bob", {"n": n})) for n in range(1, 6)]
            assert await rooms.events_after("r", 0) == (played, True)
        finally:
            await rooms.aclose()

    @pytest.mark.parametrize("loss", ["store", "room"])
    async def test_a_room_put_back_plays_online_while_the_next_waits(
            self, redis_client: Redis, redis_prefix: str, loss: str) -> None:
        """A room whose turn is over takes its seqs from Redis again, even while others are still
        being put back: a move played offline there then would start a backlog that no recovery
        writes back (the room stayed offline for good). Kills the mutants that leave ``_back``
        out of :meth:`RedisRoomStore._held` or never add to it."""
        rooms = await alice_in(RedisRoomStore(redis_client, Keys(redis_prefix), Relay(), instance_id="gw-1"), "a", "b")
        held = Held(rooms, "_reassert")  # a join awaits no REASSERT
        try:
            for room in ("a", "b"):
                await move(rooms, room, "alice", {"n": 1})
            rooms.lost({"a", "b"} if loss == "room" else None)
            task = asyncio.create_task(rooms.reassert({"a": {"s-a": "alice"}, "b": {"s-a": "alice"}}, {}))
            assert await held.next(task) == "a"
            assert await held.release(task) == "b"  # a is done: b's turn
            during = await move(rooms, "a", "alice", {"n": 2})
            assert during == MoveEvent(2, wire("a", 2, "alice", {"n": 2}))
            assert await rooms.seq("a") == 2  # from Redis, not offline
            offline = await move(rooms, "b", "alice", {"n": 2})
            assert await rooms.seq("b") == 1  # b waits: its move 2 is offline
            assert await held.finish(task) == {"a": 0, "b": 1}
            assert not rooms.down and not rooms.down_rooms
            assert await rooms.events_after("b", 1) == ([offline], True)
        finally:
            await rooms.aclose()

    @pytest.mark.parametrize("loss", ["store", "room"])
    async def test_a_loss_during_a_recovery_leaves_it_to_the_next(
            self, redis_client: Redis, redis_prefix: str, loss: str) -> None:
        """Redis (or a room's Redis Cluster master) failing us again while a recovery runs (a
        second failover) makes the rooms lost wait for the next one, those already put back
        too. Kills the mutants that go on counting rooms back, leave a room lost again among
        those back, or clear ``down``, after a loss they did not see the start of."""
        rooms = await alice_in(RedisRoomStore(redis_client, Keys(redis_prefix), Relay(), instance_id="gw-1"), "a", "b")
        held = Held(rooms, "_reassert")
        try:
            rooms.lost({"a", "b"} if loss == "room" else None)
            seats = {"a": {"s-a": "alice"}, "b": {"s-a": "alice"}}
            task = asyncio.create_task(rooms.reassert(seats, {}))
            assert await held.release(task) == "b"
            rooms.lost({"a"} if loss == "room" else None)
            assert (await move(rooms, "a", "alice", {"n": 1})).seq == 1 and await rooms.seq("a") == 0  # offline
            assert await held.finish(task) == {"a": 0, "b": 0}
            assert rooms.down if loss == "store" else rooms.down_rooms == {"a", "b"}
            assert (await move(rooms, "b", "alice", {"n": 1})).seq == 1 and await rooms.seq("b") == 0  # offline
            task = asyncio.create_task(rooms.reassert(seats, {}))
            assert await held.finish(task) == {"a": 1, "b": 1}
            assert not rooms.down and not rooms.down_rooms
            assert await rooms.seq("a") == 1 and await rooms.seq("b") == 1
        finally:
            await rooms.aclose()

    async def test_a_room_that_played_offline_after_the_recovery_began_waits_for_the_next(
            self, redis_client: Redis, redis_prefix: str) -> None:
        """A room joined here while a recovery runs is not on its list: if it plays offline
        meanwhile, the store stays down, and the next recovery writes its moves back. Kills the
        mutant that ends the outage whatever is left offline (the room then played offline for
        good, its moves never in Redis)."""
        rooms = await alice_in(RedisRoomStore(redis_client, Keys(redis_prefix), Relay(), instance_id="gw-1"), "a")
        held = Held(rooms, "_reassert")
        try:
            rooms.lost()
            task = asyncio.create_task(rooms.reassert({"a": {"s-a": "alice"}}, {}))
            assert await held.next(task) == "a"
            await alice_in(rooms, "c")
            offline = await move(rooms, "c", "alice", {"n": 1})
            assert await held.finish(task) == {"a": 0}
            assert rooms.down and await rooms.seq("c") == 0
            task = asyncio.create_task(rooms.reassert({"a": {"s-a": "alice"}, "c": {"s-a": "alice"}}, {}))
            assert await held.finish(task) == {"a": 0, "c": 1}
            assert not rooms.down
            assert await rooms.events_after("c", 0) == ([offline], True)
            assert (await move(rooms, "c", "alice", {"n": 2})).seq == 2 and await rooms.seq("c") == 2
        finally:
            await rooms.aclose()


ROOMS_AT_PLAY = ("r0", "r1", "r2")
recovery_step = st.one_of(st.tuples(st.just("move"), st.sampled_from(ROOMS_AT_PLAY)),
                          st.tuples(st.just("release")), st.tuples(st.just("recover")),
                          st.tuples(st.just("lose"), st.sampled_from(ROOMS_AT_PLAY)))


@pytest.mark.parametrize("loss", ["store", "room"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(recovery_step, max_size=30))
def test_recoveries_interleaved_with_play_keep_every_seq_once(
        redis_server: RedisServer, loss: str, steps: list[tuple[str, ...]]) -> None:
    """Moves in three rooms of one instance, interleaved at random with the Redis round trips of
    recoveries and with further losses (the whole store's, or one room's as a Redis Cluster
    master's): once a last recovery has run, every room's acknowledged seqs are 1, 2, 3.. in
    the order played, Redis' log holds exactly the moves acknowledged, and a move plays online."""
    asyncio.run(play_through_recoveries(redis_server.url, loss, steps))


async def play_through_recoveries(url: str, loss: str, steps: list[tuple[str, ...]]) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    keys = Keys("t" + uuid.uuid4().hex[:10])
    rooms = RedisRoomStore(redis, keys, Relay(), instance_id="gw-1")
    seats = {room: {"s-a": "alice", "s-b": "bob"} for room in ROOMS_AT_PLAY}
    played: dict[str, list[MoveEvent]] = {room: [] for room in ROOMS_AT_PLAY}
    task: asyncio.Task[Any] | None = None

    def lose(room: str) -> None:
        rooms.lost({room} if loss == "room" else None)

    try:
        for room in ROOMS_AT_PLAY:
            for user in ("alice", "bob"):
                await rooms.join(room, user, f"s-{user[0]}")
                await rooms.attach(room, f"sid-{room}-{user[0]}")
            played[room].append(await move(rooms, room, "alice", {"n": 1}))
            lose(room)
        held = Held(rooms, "_reassert", "_set_state")  # a join's on_join awaits SET_STATE
        for op, *arg in steps:
            if op == "move":
                played[arg[0]].append(await move(rooms, arg[0], "bob", {"n": len(played[arg[0]]) + 1}))
            elif op == "lose":
                lose(arg[0])
            elif task is not None and not task.done():
                if op == "release":
                    await held.release(task)
            elif op == "recover":
                task = asyncio.create_task(rooms.reassert(seats, {}))
                await held.next(task)
        for _ in range(3):  # the heartbeat's recoveries, until one finds nothing lost meanwhile
            if task is not None:
                await held.finish(task)
            if not rooms.down and not rooms.down_rooms:
                break
            task = asyncio.create_task(rooms.reassert(seats, {}))
        assert not rooms.down and not rooms.down_rooms, steps
        for room in ROOMS_AT_PLAY:
            played[room].append(await move(rooms, room, "alice", {"n": len(played[room]) + 1}))
            assert seqs(played[room]) == list(range(1, len(played[room]) + 1)), (room, steps)
            assert await rooms.events_after(room, 0) == (played[room], True), (room, steps)
            assert await rooms.seq(room) == len(played[room]), (room, steps)  # the last move went online
    finally:
        if task is not None and not task.done():
            task.cancel()
        await rooms.aclose()
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{keys.p}:*")] or ["-"])
        await redis.aclose()


class TickTock(Game):
    """Two actions a tick; players may move ``{"x": <int>}`` and only while the count is even."""

    name = "ticktock"
    tick_s = 0.1

    def initial_state(self) -> State:
        return {"ticks": 0, "players": []}

    def on_join(self, state: State, user_id: str) -> None:
        if user_id == "mallory":
            raise IllegalMove("not mallory")
        state["players"].append(user_id)

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        if state["ticks"] % 2:
            raise IllegalMove("wait for the tock")
        return action

    def tick(self, state: State, now: float) -> list[dict[str, Any]]:
        state["ticks"] += 1
        return [{"tick": state["ticks"]}, {"at": now}]


class TestTicks:
    async def test_ticked_actions_take_the_rooms_seq_and_are_logged(self, stores: Make) -> None:
        rooms = await stores(GameRules(TickTock()))
        await rooms.join("r", "alice", "s-alice")
        assert rooms.local_rooms() in ([], ["r"])  # a Redis store lists rooms with connections here
        assert await rooms.claim_tick("r", 1000)
        first = await rooms.tick("r", 1.5, TS)
        assert [e.json for e in first] == [wire("r", 1, "", {"tick": 1}), wire("r", 2, "", {"at": 1.5})]
        with pytest.raises(ActionError) as refused:
            await move(rooms, "r", "alice", {"x": 1})
        assert refused.value.code == AckCode.ILLEGAL_MOVE
        assert refused.value.message == "wait for the tock"
        await rooms.tick("r", 2.0, TS)
        assert (await move(rooms, "r", "alice", {"x": 1})).seq == 5
        events, complete = await rooms.events_after("r", 0)
        assert complete and seqs(events) == [1, 2, 3, 4, 5]
        assert await rooms.state("r") == (5, {"ticks": 2, "players": ["alice"]})
        assert await rooms.tick("nowhere", 1.0, TS) == []

    async def test_an_illegal_join_seats_nobody(self, stores: Make) -> None:
        rooms = await stores(GameRules(TickTock()))
        await rooms.join("r", "alice", "s-alice")
        with pytest.raises(ActionError) as refused:
            await rooms.join("r", "mallory", "s-mallory")
        assert refused.value.code == AckCode.ILLEGAL_MOVE
        assert await rooms.members("r") == ["alice"]
        assert (await rooms.state("r"))[1]["players"] == ["alice"]


@pytest.mark.parametrize("down", ["store", "room"])
async def test_a_redis_store_ticks_nothing_until_it_has_reasserted(redis_server: RedisServer,
                                                                   redis_prefix: str, down: str) -> None:
    """While ``down`` (Redis failed us, or a failover put another server there), or while the
    room is in ``down_rooms`` (its Redis Cluster master failed us), the room's seq in Redis may
    be behind what was given out: a tick must not take seqs from it until reassert() has put the
    floor back. Kills the mutants without either guard (the tick takes seqs 1 and 2 while the
    floor is 4)."""
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    rooms = RedisRoomStore(redis, Keys(redis_prefix), GameRules(TickTock()), instance_id="gw-1")
    try:
        await rooms.join("r", "alice", "s-alice")
        await rooms.attach("r", "sid-alice")
        assert await rooms.claim_tick("r", 1000)
        if down == "store":
            rooms.down = True
        else:
            rooms.down_rooms.add("r")
        assert await rooms.tick("r", 1.0, TS) == []
        assert await rooms.seq("r") == 0
        await rooms.reassert({"r": {"s-alice": "alice"}}, {"r": 4})  # this instance delivered up to 4
        assert seqs(await rooms.tick("r", 2.0, TS)) == [5, 6]
    finally:
        await rooms.aclose()
        await redis.aclose()


class TestOffline:
    """While Redis has failed this instance (``down``, until :meth:`RedisRoomStore.reassert`), a
    stateless room that has members here only plays on with seqs of this instance's own; one
    that spans instances cannot (no cluster-wide seq). What it knows of the room's spread comes
    from its attach (the room's instances then), its moves and publishes (the instances each
    reached)."""

    async def test_a_room_here_only_plays_on_with_its_own_seqs_while_down(
            self, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")  # nobody hears offline moves
        try:
            await rooms.join("r", "alice", "s-a")
            await rooms.attach("r", "sid-a")
            rooms.down = True  # Redis failed a call; it answers again, but nothing is re-asserted yet
            with pytest.raises(StoreUnavailable):
                await rooms.publish("r", "server", '{"n":1}', TS)
            assert await move(rooms, "r", "alice", {"n": 1}) == MoveEvent(1, wire("r", 1, "alice", {"n": 1}))
            assert await rooms.seq("r") == 0 and await rooms.events_after("r", 0) == ([], True)  # not in Redis
        finally:
            await rooms.aclose()

    async def test_a_move_redis_fails_is_logged_and_its_room_plays_offline(
            self, own_redis: RedisServer, redis_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
        """The call that finds Redis gone says so (``move_store_lost``, with the room and the error)
        and the move goes offline: the next seq of this instance's own, with no call to Redis."""
        redis = fails_fast(own_redis.url)
        rooms = RedisRoomStore(redis, Keys(redis_prefix), Relay(), instance_id="gw-1")
        caplog.set_level(logging.WARNING, logger="gamegw.rooms")
        try:
            await rooms.join("r", "alice", "s-a")
            await rooms.attach("r", "sid-a")
            assert (await move(rooms, "r", "alice", {"n": 1})).seq == 1
            own_redis.stop()
            assert (await move(rooms, "r", "alice", {"n": 2})).seq == 2
            assert rooms.down
            [line] = [r for r in caplog.records if r.getMessage() == "move_store_lost"]
            fields = line.gamegw_fields  # type: ignore[attr-defined]
            assert fields["room"] == "r" and fields["error"].startswith("ConnectionError: "), fields
        finally:
            await rooms.aclose()
            await redis.aclose()

    async def test_the_offline_seq_follows_the_seq_the_join_returned(
            self, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        other = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-2")
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        try:
            await other.join("r", "bob", "s-b")  # bob plays through gw-2, which routes nothing here
            for n in range(3):
                await move(other, "r", "bob", {"n": n})
            assert (await rooms.join("r", "alice", "s-a")).seq == 3
            await rooms.attach("r", "sid-a")
            rooms.down = True
            assert (await move(rooms, "r", "alice", {"n": 4})).seq == 4
        finally:
            await rooms.aclose()
            await other.aclose()

    async def test_a_room_made_anew_starts_its_offline_seqs_again(
            self, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        try:
            await rooms.join("r", "alice", "s-a")
            await rooms.attach("r", "sid-a")
            for n in range(3):
                await move(rooms, "r", "alice", {"n": n})
            await rooms.detach("r", "sid-a")
            assert await rooms.leave("r", "alice", "s-a")  # the room is deleted in Redis
            assert (await rooms.join("r", "alice", "s-a2")).seq == 0
            await rooms.attach("r", "sid-a2")
            rooms.down = True
            assert (await move(rooms, "r", "alice", {"n": 1})).seq == 1
        finally:
            await rooms.aclose()

    @pytest.mark.parametrize("other_first", [False, True], ids=["alone", "after-another"])
    async def test_an_attach_learns_whether_the_room_spans_instances(
            self, redis_client: Redis, redis_prefix: str, other_first: bool) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        other = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-2")
        try:
            await rooms.join("r", "alice", "s-a")
            if other_first:
                await other.join("r", "bob", "s-b")
                await other.attach("r", "sid-b")
            await rooms.attach("r", "sid-a")
            rooms.down = True
            if other_first:
                with pytest.raises(StoreUnavailable):
                    await move(rooms, "r", "alice", {"n": 1})
            else:
                assert (await move(rooms, "r", "alice", {"n": 1})).seq == 1
        finally:
            await rooms.aclose()
            await other.aclose()

    @pytest.mark.parametrize("spans", [False, True], ids=["other-gone", "other-came"])
    async def test_a_publish_learns_whether_the_room_spans_instances(
            self, redis_client: Redis, redis_prefix: str, spans: bool) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        other = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-2")
        try:
            await rooms.join("r", "alice", "s-a")
            await other.join("r", "bob", "s-b")
            if spans:  # gw-1 attaches alone; gw-2 comes after
                await rooms.attach("r", "sid-a")
                await other.attach("r", "sid-b")
            else:  # gw-1 attaches after gw-2; gw-2 goes
                await other.attach("r", "sid-b")
                await rooms.attach("r", "sid-a")
                await other.detach("r", "sid-b")
            assert await rooms.publish("r", "server", '{"n":1}', TS) == MoveEvent(1, wire("r", 1, "server", {"n": 1}))
            rooms.down = True
            if spans:
                with pytest.raises(StoreUnavailable):
                    await move(rooms, "r", "alice", {"n": 2})
            else:
                assert (await move(rooms, "r", "alice", {"n": 2})).seq == 2
        finally:
            await rooms.aclose()
            await other.aclose()

    async def test_a_room_heard_of_from_elsewhere_does_not_play_offline(
            self, redis_client: Redis, redis_prefix: str) -> None:
        rooms = RedisRoomStore(redis_client, Keys(redis_prefix), Relay(), instance_id="gw-1")
        try:
            await rooms.join("r", "alice", "s-a")
            await rooms.attach("r", "sid-a")  # alone here, as far as the attach saw
            rooms.note_remote("r")  # the bus heard a room event from a connection elsewhere
            rooms.down = True
            with pytest.raises(StoreUnavailable):
                await move(rooms, "r", "alice", {"n": 1})
        finally:
            await rooms.aclose()

    async def test_a_room_whose_spread_is_unknown_does_not_play_offline(
            self, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        try:
            await rooms.join("r", "alice", "s-a")
            await redis_client.set(keys.room("r", "insts"), "not a set")  # the attach's routing fails
            with pytest.raises(ResponseError):
                await rooms.attach("r", "sid-a")
            await redis_client.delete(keys.room("r", "insts"))
            rooms.down = True
            with pytest.raises(StoreUnavailable):
                await move(rooms, "r", "alice", {"n": 1})
        finally:
            await rooms.aclose()


class TestRouting:
    async def test_the_room_is_routed_here_until_its_last_local_member_detaches(
            self, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        left: list[str] = []
        rooms.on_room_left = left.append
        try:
            await rooms.detach("r", "sid-a")  # never attached: nothing to do
            await rooms.join("r", "alice", "s-a")
            await rooms.attach("r", "sid-a")
            await rooms.attach("r", "sid-b")
            await rooms.detach("r", "sid-a")
            assert await redis_client.smembers(keys.room("r", "insts")) == {"gw-1"} and left == []
            await rooms.detach("r", "sid-b")
            assert await redis_client.smembers(keys.room("r", "insts")) == set() and left == ["r"]
            assert rooms.local_rooms() == []
        finally:
            await rooms.aclose()


class TestSweepGoesOn:
    async def test_the_sweep_goes_past_live_and_racing_seats(self, redis_client: Redis, redis_prefix: str) -> None:
        """In one room: a live session's seat, then one whose session came back between the
        check and the unseat (the script checks again), then a gone one: only the last goes."""
        keys = Keys(redis_prefix)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1")
        try:
            for user, session in (("bob", "s-live"), ("carol", "s-racing"), ("alice", "s-gone")):
                await rooms.join("r", user, session)
            await redis_client.set(keys.session("s-racing"), "back")

            async def exists(session_id: str) -> bool:
                return session_id == "s-live"

            assert await rooms.sweep(exists) == [("r", "alice", True)]
            assert sorted(await rooms.members("r")) == ["bob", "carol"]
        finally:
            await rooms.aclose()


def own_pipe(url: str) -> RedisPipe:
    return RedisPipe(RedisLink(parse_redis_url(url), timeout_s=2), timeout_s=2)


class TestWait:
    """``redis_wait_replicas``: each move then waits (WAIT) for replicas to have it, on the
    move path's pipe; a WAIT that comes back short is counted and pauses waiting."""

    async def test_a_short_wait_is_counted_and_pauses_waiting(
            self, redis_server: RedisServer, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        pipe = own_pipe(redis_server.url)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1", pipe=pipe, wait_replicas=1,
                               wait_timeout_ms=50)
        shorts: list[int] = []
        rooms.on_wait_short = lambda: shorts.append(1)
        try:
            await rooms.join("r", "alice", "s-a")
            assert (await move(rooms, "r", "alice", {"n": 1})).seq == 1
            assert shorts == [1]  # the test's Redis has no replica: WAIT 1 50 answers 0
            assert (await move(rooms, "r", "alice", {"n": 2})).seq == 2
            assert shorts == [1]  # paused: no WAIT, nothing counted
        finally:
            await rooms.aclose()
            await pipe.aclose()

    async def test_without_wait_replicas_a_move_does_not_wait(
            self, redis_server: RedisServer, redis_client: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        pipe = own_pipe(redis_server.url)
        rooms = RedisRoomStore(redis_client, keys, Relay(), instance_id="gw-1", pipe=pipe)
        shorts: list[int] = []
        rooms.on_wait_short = lambda: shorts.append(1)
        try:
            await rooms.join("r", "alice", "s-a")
            assert (await move(rooms, "r", "alice", {"n": 1})).seq == 1
            assert shorts == []
            assert await rooms.events_after("r", 0) == ([MoveEvent(1, wire("r", 1, "alice", {"n": 1}))], True)
        finally:
            await rooms.aclose()
            await pipe.aclose()

    async def test_a_wait_the_replica_answers_is_not_short(self, tmp_path: Path, redis_prefix: str) -> None:
        master = RedisServer(tmp_path / "master", extra=("--repl-diskless-sync-delay", "0"))  # sync at once
        replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(master.port)))
        for node in (master, replica):
            node.workdir.mkdir()
            node.start()
        redis = Redis.from_url(master.url, decode_responses=True)
        pipe = own_pipe(master.url)
        rooms = RedisRoomStore(redis, Keys(redis_prefix), Relay(), instance_id="gw-1", pipe=pipe, wait_replicas=1,
                               wait_timeout_ms=1000)
        shorts: list[int] = []
        rooms.on_wait_short = lambda: shorts.append(1)
        try:
            async def replica_up() -> bool:
                replication = await redis.info("replication")
                return isinstance(replica := replication.get("slave0"), dict) and replica["state"] == "online"

            await eventually(replica_up)
            await rooms.join("r", "alice", "s-a")
            assert (await move(rooms, "r", "alice", {"n": 1})).seq == 1
            assert shorts == []
        finally:
            await rooms.aclose()
            await pipe.aclose()
            await redis.aclose()
            for node in (replica, master):
                node.stop()
