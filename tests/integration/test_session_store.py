"""The session store: the memory and the Redis implementation pass the same suite.

The seat rule (new, resume, takeover, refuse, evict), the holder checks (only the connection
that holds a session changes it) and grace expiry, then grace, claim and takeover in detail
(what a drop writes, the moment grace ends, what a claim resets, refusing while a session
waits in grace, evicting below a lowered limit); then the race the rule exists for: many
connects of one user at the same moment never hold more seats than the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from gamegw.server.state.keys import Keys
from gamegw.server.state.sessions import MemorySessionStore, Seat, SessionStore
from gamegw.server.state.sessions_redis import RedisSessionStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        mem: SessionStore = MemorySessionStore()
        yield mem
        await mem.aclose()
        return
    server = request.getfixturevalue("redis_server")
    redis = Redis.from_url(server.url, decode_responses=True)
    red: SessionStore = RedisSessionStore(redis, Keys(redis_prefix))
    yield red
    await red.aclose()
    await redis.aclose()


async def seat(store: SessionStore, sid: str, *, user: str = "alice", now: float = 100.0, most: int = 1,
               policy: str = "replace", instance: str = "gw-1") -> Seat:
    return await store.seat(user_id=user, sid=sid, instance_id=instance, now=now, new_session_id=f"s-{sid}",
                            max_live=most, policy=policy)


async def live(store: SessionStore, user: str = "alice") -> list[str]:
    return [s.sid for s in await store.of_user(user) if s.state == "connected"]


async def drop(store: SessionStore, sid: str, *, at: float, rooms: dict[str, int] | None = None,
               user: str = "alice") -> bool:
    [session] = [s for s in await store.of_user(user) if s.sid == sid]
    session.state, session.dropped_at, session.cause = "grace", at, "transport_close"
    session.rooms.update(rooms or {})
    return await store.drop(session, at + 30)


class TestSeat:
    async def test_new_session_under_the_limit(self, store: SessionStore) -> None:
        got = await seat(store, "c1")
        assert (got.outcome, got.live, got.evicted, got.previous_sid) == ("new", 0, [], None)
        assert got.session is not None and got.session.head() == {
            "session_id": "s-c1", "user_id": "alice", "sid": "c1", "instance_id": "gw-1", "created_at": 100.0,
            "state": "connected", "dropped_at": None, "grace_until": None, "cause": ""}
        assert (got.previous_instance, got.dropped_at, got.budget) == (None, None, None)
        [stored] = await store.of_user("alice")
        assert stored.head() == got.session.head() and stored.rooms == {}
        assert await live(store) == ["c1"]
        assert (await seat(store, "c2", most=2)).outcome == "new"
        assert await live(store) == ["c1", "c2"]

    async def test_takeover_passes_the_oldest_session_on(self, store: SessionStore) -> None:
        await seat(store, "c1", now=1)
        s1 = (await store.of_user("alice"))[0]
        await store.set_room(s1, "lobby", 3)
        got = await seat(store, "c2", now=2, instance="gw-2")
        assert (got.outcome, got.previous_sid, got.previous_instance, got.live) == ("takeover", "c1", "gw-1", 1)
        assert got.session is not None and got.session.session_id == "s-c1" and got.session.rooms == {"lobby": 3}
        assert await live(store) == ["c2"]
        # the old connection lost the session: it can change nothing any more
        assert not await store.set_room(s1, "other", 0)
        assert await store.end(s1) is None

    async def test_refuse_at_the_limit(self, store: SessionStore) -> None:
        await seat(store, "c1")
        got = await seat(store, "c2", policy="refuse")
        assert (got.outcome, got.session, got.live) == ("refused", None, 1)
        assert await live(store) == ["c1"]

    async def test_resume_claims_the_newest_drop(self, store: SessionStore) -> None:
        await seat(store, "c1", now=1, most=2)
        await seat(store, "c2", now=2, most=2)
        assert await drop(store, "c1", at=10, rooms={"a": 5})
        assert await drop(store, "c2", at=11)
        got = await seat(store, "c3", now=12, most=2)
        assert (got.outcome, got.previous_sid, got.dropped_at) == ("resumed", "c2", 11)
        got = await seat(store, "c4", now=13, most=2, policy="refuse")  # one live of two: not at the limit
        assert (got.outcome, got.previous_sid, got.dropped_at, got.evicted) == ("resumed", "c1", 10, [])
        assert got.session is not None and got.session.rooms == {"a": 5} and got.session.state == "connected"
        assert sorted(await live(store)) == ["c3", "c4"]

    async def test_a_resumed_session_is_out_of_grace_for_good(self, store: SessionStore) -> None:
        """A sweep long after the resume ends nothing: the session is connected again. Kills the
        memory store's mutant that leaves a resumed session among those in grace (its index):
        the sweep would end it under a live connection. Another user's sessions stay apart."""
        await seat(store, "c1", now=1)
        await seat(store, "b1", user="bob", now=1)
        assert await drop(store, "c1", at=10)
        assert await drop(store, "b1", at=10, user="bob")
        assert (await seat(store, "c2", now=12)).outcome == "resumed"
        assert [s.session_id for s in await store.expire_due(1e12)] == ["s-b1"]
        assert await live(store) == ["c2"] and await store.of_user("bob") == []
        assert await store.expire_due(1e12) == []

    async def test_resume_beyond_the_limit_evicts_the_oldest_live(self, store: SessionStore) -> None:
        # two sessions of one user with max 2; one drops, the limit goes down to 1 (a new config)
        await seat(store, "c1", now=1, most=2)
        await seat(store, "c2", now=2, most=2)
        await drop(store, "c2", at=3)
        got = await seat(store, "c3", now=4, most=1)
        assert got.outcome == "resumed" and [e.sid for e in got.evicted] == ["c1"]
        assert await live(store) == ["c3"]
        assert await store.get("s-c1") is None
        refused = await seat(store, "c4", now=5, most=1, policy="refuse")
        assert refused.outcome == "refused"


class TestHolder:
    async def test_drop_after_takeover_writes_nothing(self, store: SessionStore) -> None:
        """The bug 012e5d7 fixed: a drop handled while a new connection took the session over
        put it back in grace under the old sid, and the new connection went silent."""
        await seat(store, "c1")
        [old] = await store.of_user("alice")
        await seat(store, "c2")  # takes the session over
        old.state, old.dropped_at = "grace", 5.0
        assert not await store.drop(old, 35.0)
        [now] = await store.of_user("alice")
        assert (now.sid, now.state, now.grace_until) == ("c2", "connected", None)
        assert await store.expire_due(1e12) == []

    async def test_end_only_by_the_holder(self, store: SessionStore) -> None:
        await seat(store, "c1")
        [old] = await store.of_user("alice")
        await store.set_room(old, "r", 0)
        await seat(store, "c2")
        assert await store.end(old) is None
        [current] = await store.of_user("alice")
        ended = await store.end(current)
        assert ended is not None and ended.rooms == {"r": 0} and ended.sid == "c2"
        assert await store.of_user("alice") == [] and not await store.exists("s-c1")
        assert await store.end(current) is None  # once

    async def test_set_room_and_forget(self, store: SessionStore) -> None:
        await seat(store, "c1")
        [s] = await store.of_user("alice")
        assert await store.set_room(s, "a", 1) and await store.set_room(s, "b", 2)
        assert await store.set_room(s, "a", None)
        got = await store.get("s-c1")
        assert got is not None and got.rooms == {"b": 2}

    async def test_expire_hands_each_session_out_once(self, store: SessionStore) -> None:
        await seat(store, "c1", most=3)
        await seat(store, "c2", most=3)
        await drop(store, "c1", at=10, rooms={"x": 4})
        await drop(store, "c2", at=20)
        assert await store.expire_due(39) == []
        first, second = await asyncio.gather(store.expire_due(45), store.expire_due(45))
        got = first + second
        assert [(s.session_id, s.rooms, s.state) for s in got] == [("s-c1", {"x": 4}, "grace")]
        assert [s.session_id for s in await store.expire_due(100)] == ["s-c2"]
        assert await store.of_user("alice") == []

    async def test_claimed_session_does_not_expire(self, store: SessionStore) -> None:
        await seat(store, "c1")
        await drop(store, "c1", at=10)
        assert (await seat(store, "c2", now=11)).outcome == "resumed"
        assert await store.expire_due(1e12) == []
        assert await live(store) == ["c2"]

    async def test_reassert_unless_taken_over(self, store: SessionStore) -> None:
        await seat(store, "c1")
        [s] = await store.of_user("alice")
        s.rooms = {"r": 9}
        assert await store.reassert(s)
        got = await store.get("s-c1")
        assert got is not None and got.rooms == {"r": 9}
        await seat(store, "c2")
        assert not await store.reassert(s)
        assert await live(store) == ["c2"]


class TestRace:
    @pytest.mark.parametrize("most", [1, 3])
    async def test_simultaneous_connects_never_exceed_the_limit(self, store: SessionStore, most: int) -> None:
        """60 connects of one user at the same moment (the attack of issue 12): however they
        interleave, at most ``most`` sessions are live, and every other connect was told whom
        it replaced or that it was evicted."""
        results = await asyncio.gather(*(seat(store, f"c{i}", now=float(i), most=most) for i in range(60)))
        assert len(await live(store)) == most
        assert len(await store.of_user("alice")) == most
        replaced = {r.previous_sid for r in results if r.outcome == "takeover"}
        evicted = {e.sid for r in results for e in r.evicted}
        survivors = set(await live(store))
        # every sid that ever held a seat is either live now or was named to its replacer
        held = {r.session.sid for r in results if r.session is not None}
        assert held - survivors <= replaced | evicted
        assert len(held - survivors) == 60 - most

    async def test_racing_resumes_claim_once(self, store: SessionStore) -> None:
        await seat(store, "c0")
        await drop(store, "c0", at=5)
        results: list[Any] = await asyncio.gather(*(seat(store, f"r{i}", now=6) for i in range(20)))
        assert sum(r.outcome == "resumed" for r in results) == 1
        assert len(await live(store)) == 1


class TestGrace:
    """Grace, claim and takeover in the detail the rule has: what a drop writes, the moment
    grace ends, what a claim resets, and what the connection that lost the session can do."""

    async def test_a_drop_writes_the_grace_and_it_ends_at_grace_until(self, store: SessionStore) -> None:
        await seat(store, "c1", now=1)
        assert await drop(store, "c1", at=10, rooms={"r": 7})
        got = await store.get("s-c1")
        assert got is not None
        assert (got.sid, got.state, got.dropped_at, got.grace_until, got.cause, got.rooms) == (
            "c1", "grace", 10.0, 40.0, "transport_close", {"r": 7})
        assert await store.expire_due(39.999) == []
        [ended] = await store.expire_due(40.0)
        assert (ended.session_id, ended.state, ended.rooms, ended.grace_until) == ("s-c1", "grace", {"r": 7}, 40.0)
        assert await store.get("s-c1") is None and await store.of_user("alice") == []

    async def test_a_claim_reseats_the_session_and_shuts_its_old_holder_out(self, store: SessionStore) -> None:
        await seat(store, "c1", now=1)
        [old] = await store.of_user("alice")
        await drop(store, "c1", at=10, rooms={"r": 7})
        got = await seat(store, "c2", now=12, instance="gw-2")
        assert (got.outcome, got.previous_sid, got.previous_instance, got.dropped_at, got.live) == (
            "resumed", "c1", "gw-1", 10.0, 0)
        assert got.session is not None
        claimed = got.session
        assert (claimed.session_id, claimed.sid, claimed.instance_id, claimed.state, claimed.dropped_at,
                claimed.grace_until, claimed.rooms, claimed.created_at) == (
            "s-c1", "c2", "gw-2", "connected", None, None, {"r": 7}, 1.0)
        assert await store.get("s-c1") == claimed
        old.state, old.dropped_at = "grace", 11.0  # the old connection's late drop
        assert not await store.drop(old, 41.0)
        assert not await store.set_room(old, "r", 9)
        assert await store.end(old) is None
        assert await store.get("s-c1") == claimed
        assert await store.expire_due(1e12) == []

    async def test_a_claimed_session_dropped_again_gets_a_new_grace(self, store: SessionStore) -> None:
        await seat(store, "c1", now=1)
        await drop(store, "c1", at=10, rooms={"r": 7})
        await seat(store, "c2", now=12)
        assert await drop(store, "c2", at=50, rooms={"r": 8})
        assert await store.expire_due(79.5) == []  # not the first grace's end (40), the new one's (80)
        [ended] = await store.expire_due(80.0)
        assert (ended.sid, ended.dropped_at, ended.grace_until, ended.rooms) == ("c2", 50.0, 80.0, {"r": 8})

    async def test_refuse_keeps_the_session_in_grace(self, store: SessionStore) -> None:
        await seat(store, "c1", now=1, most=2)
        await seat(store, "c2", now=2, most=2)
        await drop(store, "c2", at=3)
        got = await seat(store, "c3", now=4, most=1, policy="refuse")  # the limit went down to 1
        assert (got.outcome, got.session, got.live, got.evicted) == ("refused", None, 1, [])
        kept = await store.get("s-c2")
        assert kept is not None and (kept.sid, kept.state, kept.grace_until) == ("c2", "grace", 33.0)
        assert await live(store) == ["c1"]

    async def test_takeover_below_a_lowered_limit_evicts_the_others(self, store: SessionStore) -> None:
        for i in (1, 2, 3):
            await seat(store, f"c{i}", now=i, most=3)
        await store.set_room((await store.of_user("alice"))[1], "r", 4)
        got = await seat(store, "c4", now=4, most=1)
        assert (got.outcome, got.previous_sid, got.live) == ("takeover", "c1", 3)
        assert got.session is not None and (got.session.session_id, got.session.sid) == ("s-c1", "c4")
        assert [(e.session_id, e.sid, e.rooms) for e in got.evicted] == [("s-c2", "c2", {"r": 4}), ("s-c3", "c3", {})]
        assert await live(store) == ["c4"]
        assert not await store.exists("s-c2") and not await store.exists("s-c3")


class TestRedisKeys:
    """What only the Redis store has: the event budget it keeps for the next connect, the TTL a
    drop gives the session's keys, and a session written back into a Redis that came back empty."""

    @pytest.fixture
    async def redis(self, redis_server: Any) -> AsyncIterator[Redis]:
        client = Redis.from_url(redis_server.url, decode_responses=True)
        yield client
        await client.aclose()

    async def test_the_budget_travels_with_the_seat(self, redis: Redis, redis_prefix: str) -> None:
        store, keys = RedisSessionStore(redis, Keys(redis_prefix)), Keys(redis_prefix)
        assert (await seat(store, "c1", user="bob")).budget is None
        await store.save_budget("alice", (1.5, 2.0, 100.25), 30.0)
        assert 29_000 < await redis.pttl(keys.budget("alice")) <= 30_000
        assert (await seat(store, "c2")).budget == (1.5, 2.0, 100.25)
        assert (await seat(store, "c3", policy="refuse")).budget == (1.5, 2.0, 100.25)  # refused: still told

    async def test_a_drop_keeps_the_keys_for_the_grace_and_an_hour(self, redis: Redis, redis_prefix: str) -> None:
        store, keys = RedisSessionStore(redis, Keys(redis_prefix)), Keys(redis_prefix)
        await seat(store, "c1")
        [session] = await store.of_user("alice")
        session.dropped_at, session.cause, session.rooms = 100.0, "ping_timeout", {"r": 3}
        assert await store.drop(session, 130.0)
        assert (session.state, session.grace_until) == ("grace", 130.0)
        for key in (keys.session("s-c1"), keys.session("s-c1") + ":rooms"):
            assert 3629 <= await redis.ttl(key) <= 3630  # 30 s of grace + KEEP_AFTER_GRACE_S
        got = await store.get("s-c1")
        assert got is not None and got.head() == {**session.head(), "state": "grace"}

    async def test_reassert_writes_a_whole_session_back(self, redis: Redis, redis_prefix: str) -> None:
        store, keys = RedisSessionStore(redis, Keys(redis_prefix)), Keys(redis_prefix)
        await seat(store, "c1", now=7.25)
        [session] = await store.of_user("alice")
        session.rooms = {"a": 1, "b": 2}
        await redis.delete(keys.session("s-c1"), keys.session("s-c1") + ":rooms", keys.user_sessions("alice"))
        assert await store.reassert(session)  # Redis came back empty
        assert await store.of_user("alice") == [session]
