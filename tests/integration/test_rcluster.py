"""Redis Cluster mode over a real three-master cluster: rooms in several slots, spanning two
instances, their traffic on sharded pub/sub; one master restarted under play."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from gamegw.server.config import load_settings
from gamegw.server.state import rcluster
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


async def alice_and_bob(players: Any, a_gw: Gateway, b_gw: Gateway, rooms: list[str]) -> tuple[Any, Any]:
    """alice on one instance and bob on the other, both in every room."""
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    for room in rooms:
        assert (await a.call("join", {"room": room}))["ok"]
        assert sorted((await b.call("join", {"room": room}))["members"]) == ["alice", "bob"]
    return a, b


async def test_rooms_on_three_masters_span_two_instances_over_sharded_pubsub(own_cluster, gateways, players):
    a_gw, b_gw = await gateways(2)
    rooms = rooms_on_every_master(own_cluster)
    a, b = await alice_and_bob(players, a_gw, b_gw, rooms)
    for room in rooms:
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
    # in a thread: these wait on the servers, and the gateways' loop is this test's. Called here,
    # they froze both gateways for as long as the cluster took to say ok (2 s on a busy machine),
    # and the moves then in flight to the other masters timed out ("unavailable").
    await asyncio.to_thread(master.stop)
    stopped = time.monotonic()
    await asyncio.sleep(2.0)
    await asyncio.to_thread(master.start)
    await asyncio.to_thread(own_cluster.wait_ok)
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
    a, b = await alice_and_bob(players, a_gw, b_gw, rooms)
    for room in rooms:
        assert (await a.call("move", {"room": room, "action": {}}))["seq"] == 1
    moves = await b.wait_for("move", 3)
    assert sorted((m["room"], m["seq"]) for m in moves) == sorted((room, 1) for room in rooms)


class SlotMove:
    """Moves ``key``'s slot to the next master, the steps of ``redis-cli --cluster reshard`` one at a time."""

    def __init__(self, cluster: RedisClusterServer, key: str) -> None:
        self.cluster = cluster
        self.source = cluster.node_of(key)
        self.target = cluster.nodes[(cluster.nodes.index(self.source) + 1) % len(cluster.nodes)]
        self.src, self.dst = aioredis.Redis(port=self.source.port), aioredis.Redis(port=self.target.port)
        self.slot = int(redis_sync.Redis(port=self.source.port).execute_command("CLUSTER", "KEYSLOT", key))
        self.keys: list[bytes] = []

    async def begin(self) -> None:
        """The slot is migrating: its keys are served where they are; a missing one gets ASK."""
        self.dst_id = (await self.dst.execute_command("CLUSTER", "MYID")).decode()
        src_id = (await self.src.execute_command("CLUSTER", "MYID")).decode()
        await self.dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", src_id)
        await self.src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.dst_id)

    async def copy(self) -> None:
        """The slot's keys go to the new master (in one MIGRATE)."""
        self.keys = await self.src.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 1000)
        assert self.keys, "the slot has no keys to move"
        await self.src.execute_command("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", *self.keys)

    async def finish(self) -> None:
        """The slot is the new master's: the old one answers MOVED."""
        for node in self.cluster.nodes:
            async with aioredis.Redis(port=node.port) as r:
                await r.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.dst_id)
        assert int(await self.src.execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot)) == 0
        assert int(await self.dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot)) == len(self.keys)
        await self.src.aclose()
        await self.dst.aclose()


async def test_the_move_path_follows_ask_and_moved(own_cluster):
    """SlotPipes on its own, over a slot that migrates: ASK sends the script to the new master
    after ASKING (the key is there already), MOVED sends it there and updates redis-py's slot
    map, which still named the old master. Kills the mutants that ignore ASK or MOVED, send no
    ASKING (the new master would answer MOVED back), or leave the map as it was."""
    target = parse_redis_url(own_cluster.url)
    cluster = rcluster.client(target, decode_responses=True)
    await cluster.initialize()
    pipes = rcluster.SlotPipes(cluster, RedisLink(target, timeout_s=2), timeout_s=2)
    script = "return redis.call('INCR', KEYS[1])"
    sha = hashlib.sha1(script.encode()).hexdigest()
    key = "t:{moving}:n"
    move = SlotMove(own_cluster, key)
    try:
        assert await pipes.evalsha(sha, script, [key], []) == 1
        await move.begin()
        assert await pipes.evalsha(sha, script, [key], []) == 2  # still the old master's
        await move.copy()
        assert await pipes.evalsha(sha, script, [key], []) == 3  # ASK, then the new master
        assert cluster.nodes_manager.get_node_from_slot(move.slot).port == move.source.port
        await move.finish()
        assert await pipes.evalsha(sha, script, [key], []) == 4  # MOVED
        assert cluster.nodes_manager.get_node_from_slot(move.slot).port == move.target.port
        assert await pipes.evalsha(sha, script, [key], []) == 5
        async with aioredis.Redis(port=move.target.port) as r:
            assert await r.get(key) == b"5"
    finally:
        await pipes.aclose()
        await cluster.aclose()


async def test_a_rooms_slot_migrated_to_another_master_under_play(own_cluster, gateways, players):
    """While the slot migrates, a move's script names a key that does not exist (the room's
    channel), so Redis answers TRYAGAIN, from the old master and then, after ASK, from the new
    one: the move waits and goes again. When the slot changes hands, Redis unsubscribes the
    room's channel: the room waits (``unavailable``) until it is re-asserted, as after a failover
    (the new owner could have lost writes), then plays on over MOVED, every move acknowledged in
    order and delivered on both instances. Kills the mutants that give up on TRYAGAIN or ASK."""
    a_gw, b_gw = await gateways(2, grace_s=30, redis_timeout_s=2.0)
    room = rooms_on_every_master(own_cluster)[0]
    key = f"{PREFIX}:room:{{{room}}}:seq"
    table = Table(players)
    for i in range(4):
        await table.seat(f"p{i}", room, (a_gw.url, b_gw.url)[i % 2])
    table.start()
    await asyncio.sleep(0.5)
    move = SlotMove(own_cluster, key)
    await move.begin()
    await asyncio.sleep(0.3)  # moves: served where the keys are, or TRYAGAIN (the channel is no key)
    await move.copy()
    await asyncio.sleep(0.3)  # moves: ASK to the new master, TRYAGAIN there
    handed_over = time.monotonic()
    await move.finish()
    assert own_cluster.node_of(key).port == move.target.port

    async def played_there() -> bool:
        return all(any(t > handed_over + 2.0 for t, _ in s.acked) for s in table.seats)

    await eventually(played_there, timeout=10)
    await table.finish()
    figures = table.check_sequences()
    for seat in table.seats:
        assert [code for t, code in seat.failed if t < handed_over] == [], (seat.user, seat.failed)
        assert {code for _, code in seat.failed} <= {"unavailable"}, (seat.user, seat.failed)
        assert all(t < handed_over + 2.0 for t, _ in seat.failed), ("unavailable for too long", seat.failed)
    seqs = sorted(seq for s in table.seats for _, seq in s.acked)
    assert seqs == list(range(1, len(seqs) + 1)), "seq gap or repeat across the migration"
    assert figures["moves_acked"] == len(seqs)
    async with aioredis.Redis(port=move.target.port) as r:  # the room's seq now lives on the new master
        assert int(await r.get(key)) == len(seqs)


async def test_moves_after_a_master_forgot_its_scripts(own_cluster, gateways, players):
    """SCRIPT FLUSH on every master: the move path's EVALSHA answers NOSCRIPT, and it sends the
    script's text instead, the cluster's own: a move still reaches the other instance, over
    SPUBLISH to the room's channel (seen by a subscriber of the test's own). Kills the mutant
    that falls back on the one-Redis script (a PUBLISH to every instance's channel, which a
    cluster sends to every shard)."""
    a_gw, b_gw = await gateways(2)
    rooms = rooms_on_every_master(own_cluster)
    a, b = await alice_and_bob(players, a_gw, b_gw, rooms)
    for room in rooms:
        assert (await a.call("move", {"room": room, "action": {"i": 1}}))["seq"] == 1
    assert len(await b.wait_for("move", 3)) == 3
    for node in own_cluster.nodes:
        async with aioredis.Redis(port=node.port) as r:
            await r.script_flush()
    channel = f"{PREFIX}:room:{{{rooms[0]}}}:ch"
    reader, writer, parser = await RedisLink(parse_redis_url(own_cluster.url), timeout_s=2).open(
        ("127.0.0.1", own_cluster.node_of(channel).port))
    writer.write(command("SSUBSCRIBE", channel))
    assert await read_reply(reader, parser, 2) == ["ssubscribe", channel, 1]
    for room in rooms:
        assert (await a.call("move", {"room": room, "action": {"i": 2}}))["seq"] == 2
    kind, _channel, message = await read_reply(reader, parser, 2)
    writer.close()
    await writer.wait_closed()
    assert kind == "smessage" and '"seq":2' in message, message
    moves = await b.wait_for("move", 6)
    assert sorted((m["room"], m["seq"], m["action"]["i"]) for m in moves) == sorted(
        (room, seq, seq) for room in rooms for seq in (1, 2))
