"""The connection registry: the memory and the Redis implementation pass the same suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gamegw.server.state.keys import Keys
from gamegw.server.state.registry import Connection, MemoryRegistry, Registry
from gamegw.server.state.registry_redis import RedisRegistry

# -- registry ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Registry]:
    """Every registry implementation; a new one joins by adding a param and a branch."""
    if request.param == "memory":
        reg: Registry = MemoryRegistry()
        yield reg
        await reg.aclose()
        return
    server = request.getfixturevalue("redis_server")
    redis = Redis.from_url(server.url, decode_responses=True)
    reg = RedisRegistry(redis, Keys(redis_prefix), "gw-1")
    yield reg
    await reg.aclose()
    await redis.aclose()


def conn(sid: str, user_id: str = "alice", *, instance_id: str = "gw-1", at: float = 100.0,
         rooms: set[str] | None = None) -> Connection:
    return Connection(sid=sid, user_id=user_id, instance_id=instance_id, address="127.0.0.1",
                      connected_at=at, last_seen=at, session_id=f"session-{sid}", transport="websocket",
                      rooms=set(rooms or ()))


def sids(conns: list[Connection]) -> list[str]:
    return sorted(c.sid for c in conns)


class TestRegistry:
    async def test_add_and_get(self, registry: Registry) -> None:
        c = conn("s1", rooms={"r1"})
        await registry.add(c)
        got = await registry.get("s1")
        assert got is not None
        assert got.to_dict() == c.to_dict()
        assert await registry.get("nope") is None

    async def test_remove(self, registry: Registry) -> None:
        await registry.add(conn("s1"))
        await registry.add(conn("s2", at=101))
        removed = await registry.remove("s1")
        assert removed is not None and removed.sid == "s1" and removed.user_id == "alice"
        assert await registry.get("s1") is None
        assert await registry.user_sids("alice") == ["s2"]
        assert sids(await registry.list()) == ["s2"]
        assert await registry.remove("s1") is None
        assert await registry.remove("never") is None

    async def test_remove_last_connection_forgets_the_user(self, registry: Registry) -> None:
        await registry.add(conn("s1"))
        await registry.remove("s1")
        assert await registry.user_sids("alice") == []
        assert await registry.list(user_id="alice") == []
        assert await registry.list() == []

    async def test_user_sids_oldest_first(self, registry: Registry) -> None:
        await registry.add(conn("late", at=300))
        await registry.add(conn("early", at=100))
        await registry.add(conn("middle", at=200))
        await registry.add(conn("other", "bob", at=50))
        assert await registry.user_sids("alice") == ["early", "middle", "late"]
        assert await registry.user_sids("bob") == ["other"]
        assert await registry.user_sids("nobody") == []

    async def test_list_filters(self, registry: Registry) -> None:
        await registry.add(conn("a1", "alice", instance_id="gw-1", rooms={"r1", "r2"}))
        await registry.add(conn("a2", "alice", instance_id="gw-2", rooms={"r2"}, at=101))
        await registry.add(conn("b1", "bob", instance_id="gw-1", rooms={"r1"}))
        await registry.add(conn("c1", "carol", instance_id="gw-2"))
        assert sids(await registry.list()) == ["a1", "a2", "b1", "c1"]
        assert sids(await registry.list(user_id="alice")) == ["a1", "a2"]
        assert sids(await registry.list(user_id="nobody")) == []
        assert sids(await registry.list(room="r1")) == ["a1", "b1"]
        assert sids(await registry.list(room="r2")) == ["a1", "a2"]
        assert sids(await registry.list(room="r9")) == []
        assert sids(await registry.list(instance_id="gw-2")) == ["a2", "c1"]
        assert sids(await registry.list(user_id="alice", room="r1")) == ["a1"]
        assert sids(await registry.list(user_id="alice", instance_id="gw-2")) == ["a2"]
        assert sids(await registry.list(room="r1", instance_id="gw-2")) == []

    async def test_rooms(self, registry: Registry) -> None:
        await registry.add(conn("s1"))
        await registry.add_room("s1", "r1")
        await registry.add_room("s1", "r2")
        await registry.add_room("s1", "r1")
        got = await registry.get("s1")
        assert got is not None and got.rooms == {"r1", "r2"}
        assert sids(await registry.list(room="r1")) == ["s1"]
        await registry.remove_room("s1", "r1")
        await registry.remove_room("s1", "never-joined")
        got = await registry.get("s1")
        assert got is not None and got.rooms == {"r2"}
        assert await registry.list(room="r1") == []
        # Unknown sids are ignored, not created.
        await registry.add_room("ghost", "r1")
        await registry.remove_room("ghost", "r1")
        assert await registry.get("ghost") is None

    async def test_touch(self, registry: Registry) -> None:
        await registry.add(conn("s1", at=100))
        await registry.touch("s1", 150.5)
        got = await registry.get("s1")
        assert got is not None
        assert got.last_seen == 150.5 and got.connected_at == 100
        await registry.touch("ghost", 1.0)
        assert await registry.get("ghost") is None

    async def test_mark(self, registry: Registry) -> None:
        await registry.add(conn("s1"))
        await registry.add(conn("s2"))
        await registry.mark("s1", "grace")
        got = await registry.get("s1")
        assert got is not None and got.state == "grace"
        assert sorted((c.sid, c.state) for c in await registry.list()) == [("s1", "grace"), ("s2", "connected")]
        await registry.mark("s1", "connected")
        back = await registry.get("s1")
        assert back is not None and back.state == "connected"
        await registry.mark("ghost", "grace")
        assert await registry.get("ghost") is None

    async def test_a_new_connection_is_connected_with_no_rooms(self, registry: Registry) -> None:
        fresh = Connection(sid="s1", user_id="alice", instance_id="gw-1", address="10.0.0.1", connected_at=5.0,
                           last_seen=6.0)
        expected = {"sid": "s1", "user_id": "alice", "instance_id": "gw-1", "address": "10.0.0.1",
                    "connected_at": 5.0, "last_seen": 6.0, "session_id": "", "transport": "",
                    "state": "connected", "resumed": False, "rooms": []}
        assert fresh.to_dict() == expected
        await registry.add(fresh)
        got = await registry.get("s1")
        assert got is not None and got.to_dict() == expected

    async def test_instance_filter_after_changes(self, registry: Registry) -> None:
        await registry.add(conn("s1", instance_id="gw-1"))
        await registry.add(conn("s2", "bob", instance_id="gw-1"))
        await registry.remove("s1")
        assert sids(await registry.list(instance_id="gw-1")) == ["s2"]
        assert await registry.list(instance_id="gw-9") == []

    async def test_connection_round_trips_through_a_dict(self, registry: Registry) -> None:
        c = conn("s1", rooms={"b", "a"})
        data = c.to_dict()
        assert data["rooms"] == ["a", "b"]
        assert Connection.from_dict(data) == c
        await registry.add(Connection.from_dict(data))
        got = await registry.get("s1")
        assert got is not None and got.to_dict() == data


class TestRedisRegistry:
    """What only the Redis registry has: its own entries cached, last_seen flushed in batches,
    entries of another instance, and reassert after an outage."""

    @pytest.fixture
    async def redis(self, redis_server: Any) -> AsyncIterator[Redis]:
        client = Redis.from_url(redis_server.url, decode_responses=True)
        yield client
        await client.aclose()

    async def test_an_entry_is_json_without_last_seen_or_rooms(self, redis: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        reg = RedisRegistry(redis, keys, "gw-1")
        await reg.add(conn("s1", rooms={"r1"}))
        raw = await redis.get(keys.conn("s1"))
        assert raw is not None and set(orjson.loads(raw)) == {
            "sid", "user_id", "instance_id", "address", "connected_at", "session_id", "transport", "state",
            "resumed"}
        assert await redis.smembers(keys.conn("s1") + ":rooms") == {"r1"}
        await redis.hdel(keys.seen, "s1")  # no last_seen recorded: it is the connect time
        got = await RedisRegistry(redis, keys, "gw-2").get("s1")
        assert got is not None and got.last_seen == 100.0

    async def test_last_seen_is_flushed_in_batches_for_live_entries_only(self, redis: Redis,
                                                                          redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        here, there = RedisRegistry(redis, keys, "gw-1"), RedisRegistry(redis, keys, "gw-2")
        await here.add(conn("s1"))
        await here.add(conn("s2"))
        await here.touch("s1", 150.5)
        await here.touch("s2", 151.25)
        got = await there.get("s1")
        assert got is not None and got.last_seen == 100.0  # not flushed yet
        removed = await here.remove("s2")
        assert removed is not None and removed.last_seen == 151.25  # the cache, exact
        await there.remove("s1")  # removed elsewhere before the flush
        await here.touch("s3", 1.0)  # not ours: nothing to flush
        await here.flush_seen()
        assert await redis.hgetall(keys.seen) == {}  # no field left behind for an entry that is gone
        await there.add(conn("s4"))
        await there.touch("s4", 160.75)
        await there.flush_seen()
        got = await here.get("s4")
        assert got is not None and got.last_seen == 160.75

    async def test_mark_writes_only_an_entry_that_exists(self, redis: Redis, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        here, there = RedisRegistry(redis, keys, "gw-1"), RedisRegistry(redis, keys, "gw-2")
        await here.add(conn("s1"))
        await there.mark("s1", "grace")  # another instance's entry, read from Redis
        got = await there.get("s1")
        assert got is not None and got.state == "grace"
        await here.add(conn("s2"))
        await redis.delete(keys.conn("s2"))  # gone from Redis (an outage), still ours
        await here.mark("s2", "grace")
        assert await redis.exists(keys.conn("s2")) == 0

    async def test_reassert_writes_ours_back_and_deletes_what_we_no_longer_hold(self, redis: Redis,
                                                                                redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        here, other = RedisRegistry(redis, keys, "gw-1"), RedisRegistry(redis, keys, "gw-2")
        await RedisRegistry(redis, keys, "gw-1").add(conn("s9", "zed"))  # an earlier process of gw-1's
        for sid in ("s1", "s2", "s3"):
            await here.add(conn(sid))
        await here.mark("s3", "grace")
        await redis.delete(keys.conn("s1"), keys.instances)  # what the outage lost
        lost = await here.reassert({"s1"})  # s2 and s3 ended meanwhile; s3 had dropped already
        assert [c.sid for c in lost] == ["s2"]
        got = await other.get("s1")
        assert got is not None and got.to_dict() == conn("s1").to_dict()
        assert await other.get("s9") is None and await other.user_sids("zed") == []
        assert await redis.smembers(keys.inst_sids("gw-1")) == {"s1", "s2", "s3"}
        assert await redis.smembers(keys.instances) == {"gw-1"}
        assert await redis.hexists(keys.seen, "s9") is False
