"""The cluster's operations on users (kick, revoke, drop, close one connection), its view of the
instances and the reaping of a dead one, on in-process gateways over one real Redis; and the
single-instance LocalCluster, on the injected clock."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from gamegw.server.app import PARTS
from gamegw.server.cluster import control
from gamegw.server.cluster.bus import RedisBus
from gamegw.server.cluster.control import LocalCluster, RedisCluster
from gamegw.server.protocol import codes
from gamegw.server.state.keys import Keys
from gamegw.server.state.registry import Connection
from gamegw.server.state.registry_redis import RedisRegistry
from gamegw.server.state.sessions import Session
from gamegw.server.state.sessions_redis import RedisSessionStore
from tests.conftest import eventually, refusal


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
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        outcome = await cluster_of(a).drop("alice", 30.0)
        assert 29_000 < await redis.pttl(Keys(redis_prefix).block("alice")) <= 30_000  # read at once
        assert (outcome.count, outcome.instances) == (1, {"inst-2": 1})
        await eventually(lambda: _not_connected(alice))
        assert "disconnect_reason" not in alice.events  # a cut, as a network fault would
        assert await cluster_of(a).is_blocked("alice") and await cluster_of(b).is_blocked("alice")
        assert not await cluster_of(a).is_blocked("bob")
        assert (await cluster_of(a).drop("bob", 0)).count == 0
        assert await redis.exists(Keys(redis_prefix).block("bob")) == 0
        # under a millisecond: one. A key that lives 1 ms is gone before a PTTL on a busy machine
        # (a run read -2), so the test reads the command the gateway sent, off MONITOR.
        assert await _block_command(redis, cluster_of(a), "carol", 0.0001) == \
            f"SET {Keys(redis_prefix).block('carol')} 1 PX 1"
    finally:
        await redis.aclose()


async def _block_command(redis: Redis, cluster: Any, user: str, block_s: float) -> str:
    """The command ``drop(user, block_s)`` sent to write the user's block key, as MONITOR saw it."""
    async with redis.monitor() as monitor:
        assert (await cluster.drop(user, block_s)).count == 0
        while True:
            command = (await asyncio.wait_for(monitor.next_command(), 5))["command"]
            if command.startswith("SET ") and user in command:
                return str(command)


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
    assert await cluster_of(a).close_sid("no-such-sid", codes.KICKED, "inst-2") is False  # inst-2 answers 0
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
    [info] = await cluster.instances()
    assert set(info) == {"instance", "started", "beat", "connections", "cpu_pct", "rss_bytes", "alive"}
    assert (info["instance"], info["connections"], info["alive"]) == ("solo", 2, True)
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
    now[0] = 1_009.0  # the wall clock stepped back: a drop without a block still blocks nobody
    assert not await cluster.is_blocked("bob")
    now[0] = 1_010.0
    await cluster.drop("carol", 0.5)  # under a second is a block too
    assert await cluster.is_blocked("carol")
    now[0] = 1_010.5
    assert not await cluster.is_blocked("carol")
    now[0] = 1_010.0
    [info] = await cluster.instances()
    assert (info["instance"], info["started"], info["beat"], info["alive"]) == ("solo", 1_000.0, 1_010.0, True)
    bob = await players(gw.url, gw.token("bob"))
    kicked = await cluster.kick("bob", "")
    assert (kicked.count, kicked.instances, kicked.ended) == (1, {"solo": 1}, 0)
    assert await reason_of(bob) == codes.KICKED.payload()
    assert await cluster.close_sid("nope", codes.KICKED) is False
    for player in alice:
        await eventually(lambda p=player: _not_connected(p))


# -- what the tests above leave unobserved: exact values, the unusual answers, the reaper's passes --------


async def left_behind(redis: Redis, keys: Keys, iid: str, sid: str, user: str, *, state: str = "connected",
                      seated: bool = True, session_sid: str | None = None, room: str | None = None
                      ) -> Session | None:
    """What an instance that died without a word leaves in Redis: the registry entry of its
    connection ``sid`` and, when ``seated``, the user's session, held by ``session_sid`` (``sid``
    unless told: another sid is a session taken over by a newer connection since)."""
    now = time.time()
    session = None
    if seated:
        sessions = RedisSessionStore(redis, keys)
        seat = await sessions.seat(user_id=user, sid=session_sid or sid, instance_id=iid, now=now,
                                   new_session_id=uuid.uuid4().hex, max_live=5, policy="replace")
        session = seat.session
        assert session is not None
        if room is not None:
            assert await sessions.set_room(session, room, 0)
    await RedisRegistry(redis, keys, iid).add(Connection(
        sid=sid, user_id=user, instance_id=iid, address="10.0.0.9", connected_at=now, last_seen=now,
        session_id=session.session_id if session else uuid.uuid4().hex, state=state,
        rooms={room} if room else set()))
    return session


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [r.gamegw_fields for r in caplog.records if r.getMessage() == event]


async def test_reaping_skips_what_is_not_a_live_connection_and_counts_each_drop(
        cluster_factory, players, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw")
    [a] = await cluster_factory(1)
    carol = await players(a.url, a.token("carol"))
    await carol.call("join", {"room": "r"})
    keys = Keys(redis_prefix)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        # inst-9 died; its entries, in the order reap() reads them (by sid): one already in grace,
        # one whose session is gone, one whose session a newer connection took over, two live
        await left_behind(redis, keys, "inst-9", "s1-grace", "gina", state="grace")
        await left_behind(redis, keys, "inst-9", "s2-no-session", "hal", seated=False)
        await left_behind(redis, keys, "inst-9", "s3-taken-over", "ida", session_sid="s3-newer")
        alice = await left_behind(redis, keys, "inst-9", "s4-alice", "alice", room="r")
        bob = await left_behind(redis, keys, "inst-9", "s5-bob", "bob")
        assert alice is not None and bob is not None
        assert await cluster_of(a).reap("inst-9") == 2
        assert logged(caplog, "reaped") == [{"instance": "inst-9", "connections": 2, "by": "inst-1"}]
        [gone] = await carol.wait_for("player_disconnected")
        assert gone == {"room": "r", "user": "alice", "grace_s": a.settings.grace_s}
        sessions = a.app[PARTS].gateway.sessions
        for session in (alice, bob):
            stored = await sessions.get(session.session_id)
            assert stored is not None and (stored.state, stored.cause) == ("grace", "instance_lost")
        registry = a.app[PARTS].registry
        states = {sid: (c.state if (c := await registry.get(sid)) else None)
                  for sid in ("s1-grace", "s2-no-session", "s3-taken-over", "s4-alice", "s5-bob")}
        assert states == {"s1-grace": "grace", "s2-no-session": None, "s3-taken-over": None,
                          "s4-alice": "grace", "s5-bob": "grace"}
        assert await cluster_of(a).reap("inst-9") == 0
        assert logged(caplog, "reaped") == [{"instance": "inst-9", "connections": 2, "by": "inst-1"}]  # no line for 0
    finally:
        await redis.aclose()


async def test_the_reaper_reaps_every_dead_instance_it_may_and_no_live_one(
        cluster_factory, players, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw")
    a, b = await cluster_factory(2)
    ttl_s, interval_s = a.settings.heartbeat_ttl_s, a.settings.heartbeat_interval_s
    bob = await players(b.url, b.token("bob"))
    for gw in (a, b):  # the reapers pause while Redis is recovered, then go on
        cluster_of(gw).server_changed("before", "after")
    await eventually(lambda: _logged_soon(caplog, "redis_recovered", 2))
    keys = Keys(redis_prefix)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        # dead without a word, all found at once: three with nothing left, one with a live
        # connection (its entry stays, in grace: its reap lock stays until the lock's TTL), one
        # that another survivor (inst-9) is reaping
        ghosts = ["ghost-1", "ghost-2", "ghost-3"]
        await left_behind(redis, keys, "ghost-busy", "s-dave", "dave")
        await left_behind(redis, keys, "ghost-held", "s-erin", "erin")
        assert await redis.set(keys.reap("ghost-held"), "inst-9", ex=60)
        await redis.sadd(keys.instances, *ghosts)
        # found missing, then missing for one more heartbeat TTL: the documented bound, from the
        # moment a heartbeat key expires, is 2 x TTL + interval
        await eventually(lambda: _reaped(a, "s-dave", ghosts), timeout=2 * ttl_s + interval_s)
        lock_ms = await redis.pttl(keys.reap("ghost-busy"))
        assert (max(2, int(ttl_s)) - 1) * 1000 < lock_ms <= max(2, int(ttl_s)) * 1000
        await asyncio.sleep(2 * interval_s)  # the pass that reaped them, and the next, are over
        registry = a.app[PARTS].registry
        erin, [bobs] = await registry.get("s-erin"), await registry.list(user_id="bob")
        assert erin is not None and erin.state == "connected"  # its reap lock is another's
        assert bobs.state == "connected" and bob.client.connected
        assert [i["instance"] for i in await cluster_of(a).instances()] == ["ghost-busy", "ghost-held", "inst-1",
                                                                          "inst-2"]
    finally:
        await redis.aclose()


async def _logged_soon(caplog: pytest.LogCaptureFixture, event: str, n: int) -> bool:
    return len(logged(caplog, event)) >= n


async def _reaped(gw: Any, sid: str, ghosts: list[str]) -> bool:
    conn = await gw.app[PARTS].registry.get(sid)
    listed = {i["instance"] for i in await cluster_of(gw).instances()}
    return conn is not None and conn.state == "grace" and not listed & set(ghosts)


async def test_a_failed_pass_of_the_reaper_is_logged(cluster_factory, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw")
    await cluster_factory(1)
    keys = Keys(redis_prefix)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await redis.delete(keys.instances)
        await redis.set(keys.instances, "not a set")  # every pass fails on it
        await eventually(lambda: _logged_soon(caplog, "reaper_failed", 1))
        [failed] = logged(caplog, "reaper_failed")[:1]
        assert failed["error"].startswith("WRONGTYPE")
        await redis.delete(keys.instances)
    finally:
        await redis.aclose()


async def test_the_heartbeat_key_lives_heartbeat_ttl_s(cluster_factory, redis_server, redis_prefix) -> None:
    [gw] = await cluster_factory(1, heartbeat_ttl_s=3600.0)  # long enough that a read shows any excess
    ttl_ms = int(gw.settings.heartbeat_ttl_s * 1000)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        pttl = await redis.pttl(Keys(redis_prefix).alive("inst-1"))
        assert ttl_ms - 1000 < pttl <= ttl_ms  # set again every heartbeat_interval_s (0.2 s)
    finally:
        await redis.aclose()


async def test_a_block_asks_redis_for_block_s_in_milliseconds_and_at_least_one(cluster_factory, redis_server,
                                                                                  redis_prefix) -> None:
    [a] = await cluster_factory(1)
    keys = Keys(redis_prefix)
    wanted = {keys.block("carol"), keys.block("dave")}
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with redis.monitor() as monitor, asyncio.timeout(5):
            await cluster_of(a).drop("carol", 0.0001)
            await cluster_of(a).drop("dave", 3600.0)
            sets: dict[str, list[str]] = {}
            while len(sets) < 2:  # the SETs as Redis received them (a PTTL cannot tell 1 ms from 2)
                command = (await monitor.next_command())["command"].split()
                if command[0] == "SET" and command[1] in wanted:
                    sets[command[1]] = command[3:]
        assert sets == {keys.block("carol"): ["PX", "1"], keys.block("dave"): ["PX", "3600000"]}
    finally:
        await redis.aclose()


async def test_another_instance_answers_an_unknown_op_and_a_kick_without_a_reason(cluster_factory,
                                                                                  players) -> None:
    a, b = await cluster_factory(2)
    alice = await players(b.url, b.token("alice"))
    bus = a.app[PARTS].bus
    assert isinstance(bus, RedisBus)
    # what a gateway of another version may send
    reply = await bus.request("inst-2", {"op": "promote", "user": "alice"}, 2.0)
    assert reply is not None and reply.pop("id")
    assert reply == {"instance": "inst-2", "error": "unknown op 'promote'"}
    reply = await bus.request("inst-2", {"op": "kick", "user": "alice"}, 2.0)
    assert reply is not None and reply.pop("id")
    assert reply == {"instance": "inst-2", "count": 1}
    assert await reason_of(alice) == codes.KICKED.payload()  # no message


async def test_an_instance_that_does_not_answer_leaves_the_outcome_unconfirmed(
        cluster_factory, players, redis_server, redis_prefix, monkeypatch) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 0.2)
    a, b = await cluster_factory(2)
    alice = await players(b.url, b.token("alice"))
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await left_behind(redis, Keys(redis_prefix), "inst-9", "s-alice-9", "alice")  # not reaped yet
    finally:
        await redis.aclose()
    outcome = await cluster_of(a).kick("alice", "bye")
    assert outcome.to_dict() == {"user": "alice", "count": 1, "instances": {"inst-2": 1}, "unconfirmed": ["inst-9"],
                                 "confirmed": False, "ended": 0}
    assert await reason_of(alice) == {**codes.KICKED.payload(), "message": "bye"}


async def test_revoking_all_of_a_users_tokens_returns_once_a_new_token_is_accepted(cluster_factory,
                                                                                  players) -> None:
    offset = [1_000_000.0 - time.monotonic()]

    def clock() -> float:  # a clock that runs, which the test moves forward to .7 of a second
        return offset[0] + time.monotonic()

    [gw] = await cluster_factory(1, clock=clock)
    alice = await players(gw.url, gw.token("alice", now=clock()))
    before = gw.token("alice", now=clock())
    offset[0] += math.ceil(clock()) + 0.7 - clock()  # the revoke comes at .7 of a second
    outcome = await cluster_of(gw).revoke("alice", None)
    assert (outcome.count, outcome.instances) == (1, {"inst-1": 1})
    assert await reason_of(alice) == {**codes.REVOKED.payload(), "message": "token revoked"}
    after = gw.token("alice", now=clock())  # the next second has begun: its iat is not before the cut-off
    assert (await refusal(gw.url, auth={"token": before}))["message"] == "token_invalid"
    assert (await (await players(gw.url, after)).wait_for("session"))[0]["user"] == "alice"


async def test_the_local_cluster_revokes_at_its_clock(gateway_factory, players) -> None:
    offset = [1_000.0 - time.monotonic()]

    def clock() -> float:  # a clock that runs, which the test moves forward to .7 of a second
        return offset[0] + time.monotonic()

    gw = await gateway_factory(instance_id="solo", clock=clock)
    before = gw.token("alice", now=clock())
    alice = await players(gw.url, before)
    offset[0] += math.ceil(clock()) + 0.7 - clock()
    outcome = await gw.app[PARTS].cluster.revoke("alice", None)
    assert (outcome.count, outcome.instances, outcome.unconfirmed) == (1, {"solo": 1}, [])
    assert await reason_of(alice) == {**codes.REVOKED.payload(), "message": "token revoked"}
    after = gw.token("alice", now=clock())  # the next second has begun: its iat is not before the cut-off
    assert (await refusal(gw.url, auth={"token": before}))["message"] == "token_invalid"
    assert (await (await players(gw.url, after)).wait_for("session"))[0]["user"] == "alice"
