"""The connection registry: the memory and the Redis implementation pass the same suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
