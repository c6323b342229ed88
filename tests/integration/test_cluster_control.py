"""The cluster's operations on users (kick, revoke, drop, close one connection), its view of the
instances and the reaping of a dead one, on in-process gateways over one real Redis; and the
single-instance LocalCluster, on the injected clock."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gamegw.server.app import PARTS
from gamegw.server.cluster.control import LocalCluster, RedisCluster
from gamegw.server.protocol import codes
from gamegw.server.state.keys import Keys
from tests.conftest import eventually


def cluster_of(gw: Any) -> RedisCluster:
    cluster = gw.app[PARTS].cluster
    assert isinstance(cluster, RedisCluster)
    return cluster


async def reason_of(player: Any) -> dict[str, Any]:
    [reason] = await player.wait_for("disconnect_reason")
    return dict(reason)


async def test_kick_acts_on_every_instance_and_counts_per_instance(cluster_factory, players) -> None:
    a, b = await cluster_factory(2, max_connections_per_user=3)
    here = [await players(a.url, a.token("alice")) for _ in range(2)]
    there = await players(b.url, b.token("alice"))
    bob = await players(a.url, a.token("bob"))
    outcome = await cluster_of(a).kick("alice", "enough")
    assert outcome.to_dict() == {"user": "alice", "count": 3, "instances": {"inst-1": 2, "inst-2": 1},
                                 "unconfirmed": [], "confirmed": True, "ended": 0}
    for player in (*here, there):
        assert await reason_of(player) == {**codes.KICKED.payload(), "message": "enough"}
    assert bob.client.connected
    # nobody left to act on: nothing counted, every instance still asked (this one at least)
    assert (await cluster_of(b).kick("alice", "again")).to_dict()["count"] == 0


async def test_revoke_closes_the_users_connections_everywhere(cluster_factory, players) -> None:
    a, b = await cluster_factory(2, max_connections_per_user=2)
    alice = [await players(a.url, a.token("alice")), await players(b.url, b.token("alice"))]
    outcome = await cluster_of(b).revoke("alice", None)
    assert (outcome.user, outcome.count, outcome.instances, outcome.unconfirmed) == (
        "alice", 2, {"inst-1": 1, "inst-2": 1}, [])
    for player in alice:
        assert await reason_of(player) == {**codes.REVOKED.payload(), "message": "token revoked"}


async def test_drop_cuts_without_a_reason_and_blocks_for_block_s(cluster_factory, players,
                                                                   redis_server, redis_prefix) -> None:
    a, b = await cluster_factory(2)
    alice = await players(b.url, b.token("alice"))
    outcome = await cluster_of(a).drop("alice", 30.0)
    assert (outcome.count, outcome.instances) == (1, {"inst-2": 1})
    await eventually(lambda: _not_connected(alice))
    assert "disconnect_reason" not in alice.events  # a cut, as a network fault would
    assert await cluster_of(a).is_blocked("alice") and await cluster_of(b).is_blocked("alice")
    assert not await cluster_of(a).is_blocked("bob")
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert 29_000 < await redis.pttl(Keys(redis_prefix).block("alice")) <= 30_000
        assert (await cluster_of(a).drop("bob", 0)).count == 0
        assert await redis.exists(Keys(redis_prefix).block("bob")) == 0
        assert (await cluster_of(a).drop("carol", 0.0001)).count == 0  # under a millisecond: one
        assert 0 <= await redis.pttl(Keys(redis_prefix).block("carol")) <= 1
    finally:
        await redis.aclose()


async def _not_connected(player: Any) -> bool:
    return not player.client.connected


async def test_close_sid_finds_the_connection_on_its_instance(cluster_factory, players,
                                                              redis_server, redis_prefix) -> None:
    a, b = await cluster_factory(2)
    alice = await players(a.url, a.token("alice"))
    bob = await players(b.url, b.token("bob"))
    alice_sid, bob_sid = alice.client.namespaces["/game"], bob.client.namespaces["/game"]
    assert await cluster_of(a).close_sid(bob_sid, codes.SESSION_REPLACED) is True  # on the other instance
    assert await reason_of(bob) == codes.SESSION_REPLACED.payload()
    assert await cluster_of(b).close_sid(alice_sid, codes.SHUTDOWN, "inst-1") is True
    assert await reason_of(alice) == codes.SHUTDOWN.payload()
    assert await cluster_of(a).close_sid("no-such-sid", codes.KICKED) is False
    carol = await players(b.url, b.token("carol"))
    carol_sid = carol.client.namespaces["/game"]
    assert await cluster_of(a).close_sid(carol_sid, codes.KICKED, "inst-9") is False  # no such instance alive
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await redis.delete(Keys(redis_prefix).alive("inst-2"))  # inst-2 looks dead (until its next beat)
        assert await cluster_of(a).close_sid(carol_sid, codes.KICKED) is False
    finally:
        await redis.aclose()
    assert carol.client.connected


async def test_instances_lists_the_live_and_the_dead(cluster_factory, players, redis_server, redis_prefix) -> None:
    a, b = await cluster_factory(2)
    await players(b.url, b.token("alice"))
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await redis.sadd(Keys(redis_prefix).instances, "ghost")  # listed, no heartbeat
        await eventually(lambda: _connections_seen(a, "inst-2", 1))
        listed = await cluster_of(a).instances()
        assert [(i["instance"], i["alive"]) for i in listed] == [("ghost", False), ("inst-1", True),
                                                                 ("inst-2", True)]
        assert listed[0] == {"instance": "ghost", "alive": False}
        assert (listed[1]["connections"], listed[2]["connections"]) == (0, 1)
        assert {"started", "beat", "cpu_pct", "rss_bytes"} <= set(listed[1])
        # the reaper: missing for one heartbeat TTL (1 s here), then reaped and forgotten
        await eventually(lambda: _listed(a, ["inst-1", "inst-2"]), timeout=5)
        await redis.delete(Keys(redis_prefix).instances)
        assert await cluster_of(b).instances() == []
    finally:
        await redis.aclose()


async def _connections_seen(gw: Any, iid: str, n: int) -> bool:
    return any(i["instance"] == iid and i.get("connections") == n for i in await cluster_of(gw).instances())


async def _listed(gw: Any, ids: list[str]) -> bool:
    return [i["instance"] for i in await cluster_of(gw).instances()] == ids


async def test_reaping_an_instance_turns_its_connections_into_drops(cluster_factory, players,
                                                                    redis_server, redis_prefix) -> None:
    a, b = await cluster_factory(2)
    alice = await players(a.url, a.token("alice"))
    bob = await players(b.url, b.token("bob"))
    await alice.call("join", {"room": "r"})
    await bob.call("join", {"room": "r"})
    keys = Keys(redis_prefix)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await redis.smembers(keys.room("r", "insts")) == {"inst-1", "inst-2"}
        assert await cluster_of(a).reap("inst-2") == 1
        [gone] = await alice.wait_for("player_disconnected")
        assert gone["user"] == "bob"
        assert await redis.smembers(keys.room("r", "insts")) == {"inst-1"}
        assert await redis.exists(keys.inst_rooms("inst-2")) == 0
        [entry] = await a.app[PARTS].registry.list(user_id="bob")
        assert entry.state == "grace"
        assert await cluster_of(a).reap("inst-2") == 0  # once
    finally:
        await redis.aclose()


async def test_the_local_cluster_blocks_by_its_clock_and_counts_here(gateway_factory, players) -> None:
    gw = await gateway_factory(instance_id="solo", max_connections_per_user=2)
    now = [1_000.0]
    cluster = LocalCluster(gw.app[PARTS].gateway, clock=lambda: now[0])
    alice = [await players(gw.url, gw.token("alice")) for _ in range(2)]
    outcome = await cluster.drop("alice", 10.0)
    assert (outcome.count, outcome.instances, outcome.unconfirmed) == (2, {"solo": 2}, [])
    assert await cluster.is_blocked("alice")
    now[0] = 1_009.9
    assert await cluster.is_blocked("alice")
    now[0] = 1_010.0
    assert not await cluster.is_blocked("alice")
    assert not await cluster.is_blocked("alice")  # and forgotten
    assert (await cluster.drop("bob", 0)).to_dict() == {"user": "bob", "count": 0, "instances": {},
                                                         "unconfirmed": [], "confirmed": True, "ended": 0}
    assert not await cluster.is_blocked("bob")
    [info] = await cluster.instances()
    assert (info["instance"], info["started"], info["beat"], info["alive"]) == ("solo", 1_000.0, 1_010.0, True)
    bob = await players(gw.url, gw.token("bob"))
    kicked = await cluster.kick("bob", "")
    assert (kicked.count, kicked.instances, kicked.ended) == (1, {"solo": 1}, 0)
    assert await reason_of(bob) == codes.KICKED.payload()
    assert await cluster.close_sid("nope", codes.KICKED) is False
    for player in alice:
        await eventually(lambda p=player: _not_connected(p))
