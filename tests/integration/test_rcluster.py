"""Redis Cluster mode over a real three-master cluster: rooms in several slots, spanning two
instances, their traffic on sharded pub/sub; one master restarted under play."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from gamegw.server.config import load_settings
from gamegw.server.state.redis_link import RedisLink, command, read_reply
from gamegw.server.state.redis_url import parse_redis_url
from tests.conftest import TEST_SECRET, Gateway, eventually, start_gateway
from tests.integration.test_faults import Table, registry
from tests.redis_servers import RedisClusterServer

pytestmark = pytest.mark.timeout(120)
PREFIX = "rc"


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    """Three masters of this test's own, with append-only files (a restarted master keeps its data)."""
    server = RedisClusterServer(tmp_path / "cluster", persist=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def gateways(own_cluster: RedisClusterServer) -> AsyncIterator[Callable[..., Awaitable[list[Gateway]]]]:
    started: list[Gateway] = []

    async def factory(n: int, **overrides: Any) -> list[Gateway]:
        for _ in range(n):
            settings = load_settings({"GAMEGW_JWT_SECRET": TEST_SECRET}, None, {
                "port": 0, "instance_id": f"inst-{len(started) + 1}", "redis_url": own_cluster.url,
                "redis_prefix": PREFIX, "heartbeat_interval_s": 0.2, "heartbeat_ttl_s": 1.0, **overrides})
            started.append(await start_gateway(settings))
        return started[-n:]

    yield factory
    for gw in reversed(started):
        await gw.aclose()


def rooms_on_every_master(cluster: RedisClusterServer) -> list[str]:
    """One room name per master: the room's keys (and channel) live on that master."""
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(cluster.node_of(f"{PREFIX}:room:{{r{i}}}:seq").port, f"r{i}")
        if len(found) == len(cluster.nodes):
            return [found[n.port] for n in cluster.nodes]
    raise AssertionError("no room name for some master")


def shard_subscribers(cluster: RedisClusterServer, room: str) -> int:
    """How many connections SSUBSCRIBE to the room's channel, on the master of its slot."""
    channel = f"{PREFIX}:room:{{{room}}}:ch"
    client = redis_sync.Redis(port=cluster.node_of(channel).port)
    try:
        [_name, count] = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(count)
    finally:
        client.close()


async def test_rooms_on_three_masters_span_two_instances_over_sharded_pubsub(own_cluster, gateways, players):
    a_gw, b_gw = await gateways(2)
    rooms = rooms_on_every_master(own_cluster)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    for room in rooms:
        assert (await a.call("join", {"room": room}))["ok"]
        assert sorted((await b.call("join", {"room": room}))["members"]) == ["alice", "bob"]
        assert shard_subscribers(own_cluster, room) == 2  # one subscription per instance, on the room's master

    async def play(p: Any, room: str) -> list[int]:
        return [(await p.call("move", {"room": room, "action": {"n": i}}))["seq"] for i in range(10)]

    acks = await asyncio.gather(*(play(p, room) for p in (a, b) for room in rooms))
    assert sorted(s for ack in acks for s in ack) == sorted(list(range(1, 21)) * 3)
    for p in (a, b):
        moves = await p.wait_for("move", 60)
        for room in rooms:
            assert [m["seq"] for m in moves if m["room"] == room] == list(range(1, 21))
    # the users' and sessions' keys are spread over the masters too: the lists cover them all
    assert sorted(c["user_id"] for c in await registry(a_gw.url)) == ["alice", "bob"]

    assert (await b.call("leave", {"room": rooms[0]}))["ok"]
    assert shard_subscribers(own_cluster, rooms[0]) == 1  # the last member here left: unsubscribed
    [left] = await a.wait_for("player_left")
    assert left == {"room": rooms[0], "user": "bob", "reason": "left"}


async def test_one_master_restarted_under_play(own_cluster, gateways, players):
    """The rooms of the other masters play on; the restarted master's room answers unavailable
    (it spans the instances), then plays again with no move lost, repeated or out of order."""
    a_gw, b_gw = await gateways(2, redis_timeout_s=0.5, grace_s=30)
    rooms = rooms_on_every_master(own_cluster)
    table = Table(players)
    for i in range(6):
        await table.seat(f"p{i}", rooms[i % 3], (a_gw.url, b_gw.url)[i // 3 % 2])
    table.start()
    await asyncio.sleep(1.0)
    master = own_cluster.node_of(f"{PREFIX}:room:{{{rooms[0]}}}:seq")
    master.stop()
    stopped = time.monotonic()
    await asyncio.sleep(2.0)
    master.start()
    own_cluster.wait_ok()
    back = time.monotonic()

    async def plays_again() -> bool:
        return any(t > back for s in table.seats if s.room == rooms[0] for t, _ in s.acked)

    await eventually(plays_again, timeout=15)
    await asyncio.sleep(1.5)
    await table.finish()
    figures = table.check_sequences()
    print({s.user: (s.room, len(s.acked), dict(s.errors)) for s in table.seats}, figures)
    assert figures["moves_acked"] > 50, figures
    for seat in table.seats:  # the rooms of the other masters played on; the restarted one's waited
        if seat.room == rooms[0]:
            assert set(seat.errors) == {"unavailable"} and seat.errors["unavailable"] > 5, seat.errors
        else:
            during = [seq for t, seq in seat.acked if stopped + 0.5 < t < stopped + 2.0]
            assert not seat.errors and len(during) > 3, (seat.room, seat.errors, len(during))
    for seat in table.seats:
        assert seat.player.client.connected, f"{seat.user} lost its connection"


async def test_a_cluster_with_a_password_plays_and_its_masters_are_not_one_server(own_cluster, gateways, players):
    """The raw connections (the control listener on a seed node, each master's SSUBSCRIBE
    connection) AUTH through RedisLink; a cluster's masters have run_ids of their own, which
    must not read as a Redis that changed. Kills the mutants that send no AUTH to a named master
    (PING answers NOAUTH) and that compare run_ids on a cluster (ServerChanged at the second
    master)."""
    rooms = rooms_on_every_master(own_cluster)
    for node in own_cluster.nodes:
        with redis_sync.Redis(port=node.port) as admin:
            admin.config_set("requirepass", "s3cret")
    url = own_cluster.url.replace("redis+cluster://", "redis+cluster://:s3cret@")
    link = RedisLink(parse_redis_url(url), timeout_s=2)
    for node in own_cluster.nodes:  # every master in turn, on one link
        reader, writer, parser = await link.open(("127.0.0.1", node.port))
        writer.write(command("PING"))
        assert await read_reply(reader, parser, 2) == "PONG"
        writer.close()
        await writer.wait_closed()
    a_gw, b_gw = await gateways(2, redis_url=url)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    for room in rooms:
        assert (await a.call("join", {"room": room}))["ok"]
        assert (await b.call("join", {"room": room}))["ok"]
        assert (await a.call("move", {"room": room, "action": {}}))["seq"] == 1
    moves = await b.wait_for("move", 3)
    assert sorted((m["room"], m["seq"]) for m in moves) == sorted((room, 1) for room in rooms)
