"""Redis Sentinel, with the real thing: a master, a replica and three sentinels on free ports
(tests/sentinel.py), two in-process gateways over ``redis+sentinel://``, the master SIGKILLed.

What the contract keeps across a failover: moves are acknowledged again once the replica is
promoted; no client ever receives one seq for two different moves (each instance re-asserts
its rooms' seq floor, as for a Redis that came back empty); the moves acknowledged and then lost
with the master (replication is asynchronous) are counted and a ``sync`` across them answers
``complete: false``; sessions in grace survive, and every player who was disconnected resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.exceptions import ResponseError

from gamegw.server.app import PARTS
from gamegw.server.state.pipe import RedisPipe
from gamegw.server.state.redis_link import MasterNotFound, RedisLink, ServerChanged
from gamegw.server.state.redis_url import parse_redis_url
from tests.conftest import RedisServer, eventually, free_port
from tests.integration.test_faults import Table, check_registry, registry
from tests.integration.test_resume import drop, gone
from tests.sentinel import SERVICE, SentinelSet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    deployment = SentinelSet(tmp_path / "sentinel")
    deployment.start()
    yield deployment
    deployment.stop()


def sample(gw: Any, name: str) -> float:
    return gw.app[PARTS].metrics.registry.get_sample_value(name) or 0.0


OVER_SENTINEL = {"redis_timeout_s": 0.5, "grace_s": 30}


async def three_moves_across_two_instances(sentinels: SentinelSet, cluster_factory, players):
    """Two instances over Sentinel; alice (on the first) and bob (on the second) in room ``r``;
    alice's three moves acknowledged as seq 1 to 3 and delivered to bob."""
    a, b = await cluster_factory(2, redis_url=sentinels.url, **OVER_SENTINEL)
    alice = await players(a.url, a.token("alice"))
    bob = await players(b.url, b.token("bob"))
    for player in (alice, bob):
        assert (await player.call("join", {"room": "r"}))["ok"] is True
    for i in range(3):
        assert await alice.call("move", {"room": "r", "action": {"i": i}}) == {"ok": True, "seq": i + 1}
    await bob.wait_for("move", 3)
    return a, b, alice, bob


async def test_moves_lost_with_the_master_are_counted_and_a_sync_across_them_is_incomplete(
        sentinels: SentinelSet, cluster_factory, players) -> None:
    """The replica is cut off (stopped, its link killed) while three moves are acknowledged; then
    the master dies. The promoted replica has seq 3, the players saw 6: the room goes on at 7,
    the three lost moves are counted once across the two instances, and a ``sync`` from 3 says
    ``complete: false``. (Kills the mutants that drop the seq floor in ``reassert`` (the next
    move gets seq 4 again) and that do not count the hole.)"""
    a, b, alice, bob = await three_moves_across_two_instances(sentinels, cluster_factory, players)
    await eventually(_replica_has(sentinels, 3))

    replica = sentinels.replica
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)  # the replica hears nothing more...
    try:
        with redis_sync.Redis(port=sentinels.master.port) as master:
            assert master.client_kill_filter(_type="replica") == 1  # ...and cannot come back for it
        for i in range(3, 6):
            assert await alice.call("move", {"room": "r", "action": {"i": i}}) == {"ok": True, "seq": i + 1}
        await bob.wait_for("move", 6)
        old = sentinels.kill_master()
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    await asyncio.to_thread(sentinels.wait_failover, old.port)

    acks: list[dict[str, Any]] = []

    async def moved() -> bool:
        acks.append(await bob.call("move", {"room": "r", "action": {"after": True}}))
        return bool(acks[-1].get("ok"))

    await eventually(moved, timeout=15)
    assert acks[-1] == {"ok": True, "seq": 7}, acks
    [*_, seventh] = await alice.wait_for("move", 7)
    assert seventh["seq"] == 7 and seventh["action"] == {"after": True}
    assert [m["seq"] for m in bob.events["move"]] == [1, 2, 3, 4, 5, 6, 7]
    sync = await bob.call("sync", {"room": "r", "after_seq": 3})
    assert sync == {"ok": True, "events": [seventh], "complete": False}
    assert await bob.call("sync", {"room": "r", "after_seq": 6}) == {"ok": True, "events": [seventh],
                                                                     "complete": True}
    assert sample(a, "gamegw_moves_lost_total") + sample(b, "gamegw_moves_lost_total") == 3
    assert sample(a, "gamegw_redis_server_changes_total") == sample(b, "gamegw_redis_server_changes_total") == 1


def _replica_has(sentinels: SentinelSet, seq: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        with redis_sync.Redis(port=sentinels.replica.port, decode_responses=True) as r:
            return any(k.endswith(":seq") and int(r.get(k) or 0) == seq for k in r.keys("*"))

    return check


async def test_a_failover_under_play(sentinels: SentinelSet, cluster_factory, players) -> None:
    """Seats play in a room on two instances and in one on a single instance; one player waits
    in grace; the master is SIGKILLed. Play is acknowledged again after the failover, nobody sees
    one seq for two moves, the player in grace and anyone the failover disconnected resume."""
    a, b = await cluster_factory(2, redis_url=sentinels.url, **OVER_SENTINEL)
    table = Table(players)
    mixed = [await table.seat(f"mixed{i}", "mixed", (a.url, b.url)[i % 2]) for i in range(4)]
    for i in range(2):
        await table.seat(f"solo{i}", "solo", a.url)
    waiting = await table.seat("waiting", "mixed", b.url)
    table.start()
    await asyncio.sleep(1.0)
    assert (await drop(b, "waiting"))["count"] == 1
    await eventually(gone(waiting.player))
    await mixed[0].player.wait_for("player_disconnected")
    await asyncio.sleep(0.3)  # the grace session reaches the replica

    old = sentinels.kill_master()
    killed = time.monotonic()
    failover_s = await asyncio.to_thread(sentinels.wait_failover, old.port)

    async def mixed_room_plays() -> bool:
        return any(t > killed + failover_s for s in mixed for t, _ in s.acked)

    await eventually(mixed_room_plays, timeout=15)
    back_s = min(t for s in mixed for t, _ in s.acked if t > killed + failover_s) - killed
    disconnected = [s for s in table.seats if not s.player.client.connected]
    assert waiting in disconnected
    await asyncio.gather(*(table.resume(s, s.url) for s in disconnected))  # each asserts "resumed"
    await asyncio.sleep(1.5)
    await table.finish()

    one_move_per_seq: dict[tuple[str, int], tuple[str, str, int]] = {}
    for seat in table.seats:
        assert seat.received == sorted(set(seat.received)), f"{seat.user} saw a seq twice: {seat.received}"
        for m in seat.moves:
            move = (m["user"], repr(m["action"]), m["ts"])
            assert one_move_per_seq.setdefault((m["room"], m["seq"]), move) == move, (seat.user, m)
    for room in ("mixed", "solo"):
        acked = [seq for s in table.seats if s.room == room for _, seq in s.acked]
        assert len(acked) == len(set(acked)), f"{room}: a seq acknowledged twice"
    assert all(not s.left_events for s in table.seats), "player_left was sent"
    check_registry(await registry(a.url), {s.user for s in table.seats}, {"connected"})
    lost = sample(a, "gamegw_moves_lost_total") + sample(b, "gamegw_moves_lost_total")
    print(f"\nfailover {failover_s:.2f} s, spanning room acknowledged again {back_s:.2f} s after the kill, "
          f"{len(disconnected)} players resumed, {lost:.0f} moves lost, "
          f"{sum(len(s.acked) for s in table.seats)} moves acknowledged")


async def test_a_link_notices_another_server_and_tells_once(tmp_path: Path) -> None:
    """A restarted Redis is another server (its run_id): the first connection to it fails after
    telling ``on_server_changed``, the next one is used. (Kills the mutant that compares nothing.)"""
    server = RedisServer(tmp_path)
    server.start()
    try:
        link = RedisLink(parse_redis_url(server.url), timeout_s=1)
        told: list[tuple[str, str]] = []
        link.on_server_changed = lambda before, after: told.append((before, after))
        for _ in range(2):
            _, writer, _ = await link.open()
            writer.close()
        first = link.run_id
        server.stop()
        server.start()
        with pytest.raises(ServerChanged):
            await link.open()
        assert told == [(first, link.run_id)] and link.run_id != first
        _, writer, _ = await link.open()
        writer.close()
        assert len(told) == 1
    finally:
        server.stop()


async def test_a_link_without_a_sentinel_says_which_it_asked() -> None:
    ports = [free_port(), free_port()]
    link = RedisLink(parse_redis_url(f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/0/main"),
                     timeout_s=1)
    with pytest.raises(MasterNotFound) as caught:
        await link.open()
    assert str(caught.value).startswith(f"no sentinel named a master for 'main' (127.0.0.1:{ports[0]}: ")
    assert f"; 127.0.0.1:{ports[1]}: " in str(caught.value)


async def test_redis_wait_replicas_holds_the_ack_until_a_replica_has_the_move(
        sentinels: SentinelSet, cluster_factory, players) -> None:
    """``redis_wait_replicas = 1``: a move is acknowledged once the replica has it (read there
    right after the ack); with the replica stopped, eight players' moves sent at once share one WAIT and
    are all acknowledged after its timeout (half of ``redis_timeout_s``; with a WAIT each, in
    turn on the one move connection, the last would wait four times that), the short WAIT is
    counted once, and WAIT pauses: the next five moves do not wait (with no pause, each waits
    and is counted). (Kills the mutant without the WAIT.)"""
    [gw] = await cluster_factory(1, redis_url=sentinels.url, redis_wait_replicas=1, redis_timeout_s=1.0)
    alice = await players(gw.url, gw.token("alice"))
    others = [await players(gw.url, gw.token(f"p{i}")) for i in range(7)]  # one player's moves go one by one
    for player in (alice, *others):
        assert (await player.call("join", {"room": "r"}))["ok"] is True
    for i in range(5):
        ack = await alice.call("move", {"room": "r", "action": {"i": i}})
        assert ack == {"ok": True, "seq": i + 1}
        assert await _replica_has(sentinels, i + 1)()  # the ack came after the replica had it
    assert sample(gw, "gamegw_redis_wait_short_total") == 0

    replica = sentinels.replica
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        acks = await asyncio.gather(*(p.call("move", {"room": "r", "action": {"i": i}})
                                      for i, p in enumerate((alice, *others), 5)))
        waited_s = time.monotonic() - started
        assert sorted(ack["seq"] for ack in acks) == list(range(6, 14)), acks
        # the short WAIT pauses WAIT (WAIT_PAUSE_S): the next moves do not each hold the move
        # connection until WAIT's timeout (after a failover, the new master has no replica)
        for i in range(13, 18):
            assert await alice.call("move", {"room": "r", "action": {"i": i}}) == {"ok": True, "seq": i + 1}
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    assert 0.5 <= waited_s < 1.0, waited_s
    assert sample(gw, "gamegw_redis_wait_short_total") == 1


async def test_operators_read_the_registry_through_sentinel(sentinels: SentinelSet, cluster_factory, players,
                                                            redis_prefix: str) -> None:
    """``gamectl connections ls --redis redis+sentinel://...`` finds the master through the
    sentinels; a service they do not monitor is one line naming what each answered."""
    [gw] = await cluster_factory(1, redis_url=sentinels.url)
    alice = await players(gw.url, gw.token("alice"))
    gamectl = str(Path(sys.executable).with_name("gamectl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    listed = await asyncio.to_thread(subprocess.run, [gamectl, "connections", "ls", "--redis", sentinels.url,
                                                      "--prefix", redis_prefix, "--json"],
                                     env=env, capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    [conn] = json.loads(listed.stdout)["connections"]
    assert (conn["user_id"], conn["sid"], conn["instance_id"]) == ("alice", alice.client.get_sid("/game"), "inst-1")

    wrong = sentinels.url.rsplit("/", 1)[0] + "/other"
    refused = await asyncio.to_thread(subprocess.run, [gamectl, "connections", "ls", "--redis", wrong],
                                      env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    ports = sentinels.sentinel_ports
    assert refused.stderr.splitlines()[0] == (
        f"error: no master for Redis at {wrong}: no sentinel named a master for 'other' ("
        + "; ".join(f"127.0.0.1:{p}: no master named 'other'" for p in ports) + ")")


async def test_a_redis_user_without_info_and_role_still_plays(redis_server, cluster_factory, players) -> None:
    """INFO and ROLE are @dangerous to Redis's ACLs; a gateway user without them connects and
    plays (failovers are then noticed by errors and READONLY only). Kills the mutant that
    treats their refusal as a failed connection (the start fails with NOPERM)."""
    name = "t" + uuid.uuid4().hex[:10]
    with redis_sync.Redis(port=redis_server.port) as admin:
        admin.acl_setuser(name, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                          commands=["+@all", "-info", "-role"])
    try:
        [gw] = await cluster_factory(1, redis_url=f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0")
        alice = await players(gw.url, gw.token("alice"))
        assert (await alice.call("join", {"room": "r"}))["ok"] is True
        assert await alice.call("move", {"room": "r", "action": {}}) == {"ok": True, "seq": 1}
        [move] = await alice.wait_for("move")
        assert move["seq"] == 1
    finally:
        with redis_sync.Redis(port=redis_server.port) as admin:
            admin.acl_deluser(name)


async def test_a_move_never_takes_a_seq_from_another_server_before_recovery(tmp_path: Path, cluster_factory,
                                                                            players) -> None:
    """Redis is replaced (here: restarted empty) while nothing else has noticed yet (heartbeats
    and probes 30 s apart, the listener in its backoff): the move pipe's new connection sees
    another run_id, fails, and the move is played as during an outage (seq 4, the room being
    on this instance only) instead of going to a server that has lost the room. Kills the
    mutant that compares no run_id (the move is refused ``not_in_room``)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        [gw] = await cluster_factory(1, redis_url=server.url, redis_timeout_s=0.5, heartbeat_interval_s=30,
                                     heartbeat_ttl_s=60, bus_probe_interval_s=30)
        alice = await players(gw.url, gw.token("alice"))
        assert (await alice.call("join", {"room": "solo"}))["ok"] is True
        for i in range(3):
            assert await alice.call("move", {"room": "solo", "action": {"i": i}}) == {"ok": True, "seq": i + 1}
        server.stop()
        await asyncio.sleep(2.0)  # the listener's backoff is past a second now
        await asyncio.to_thread(server.start)
        assert await alice.call("move", {"room": "solo", "action": {"i": 3}}) == {"ok": True, "seq": 4}
        assert [m["seq"] for m in await alice.wait_for("move", 4)] == [1, 2, 3, 4]
        assert sample(gw, "gamegw_redis_server_changes_total") == 1
    finally:
        server.stop()


async def test_a_manual_failover_loses_nothing(sentinels: SentinelSet, cluster_factory, players) -> None:
    """``SENTINEL FAILOVER``: the replica is promoted once it has caught up, and the sentinels
    turn the old master into a replica and cut its clients. Play goes on at the next seq and
    nothing is counted lost."""
    a, b, alice, bob = await three_moves_across_two_instances(sentinels, cluster_factory, players)
    old_port = sentinels.port
    with redis_sync.Redis(port=sentinels.sentinel_ports[0]) as sentinel:
        assert sentinel.sentinel_failover(SERVICE) is True
    await asyncio.to_thread(sentinels.wait_failover, old_port)
    await eventually(_role(old_port, "slave"), timeout=15)  # the old master now replicates the new one

    acks: list[dict[str, Any]] = []

    async def moved() -> bool:
        acks.append(await alice.call("move", {"room": "r", "action": {"after": True}}))
        return bool(acks[-1].get("ok"))

    await eventually(moved, timeout=15)
    assert acks[-1] == {"ok": True, "seq": 4}, acks
    assert [m["seq"] for m in await bob.wait_for("move", 4)] == [1, 2, 3, 4]
    assert sample(a, "gamegw_moves_lost_total") + sample(b, "gamegw_moves_lost_total") == 0


def _role(port: int, role: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        with redis_sync.Redis(port=port, decode_responses=True) as r:
            return bool(r.role()[0] == role)

    return check


async def test_the_move_pipe_asks_again_after_readonly(tmp_path: Path) -> None:
    """A master demoted to a replica answers writes with ``READONLY`` on connections it keeps
    open; the pipe then closes its connection, so that the next call asks where the master is.
    (Kills the mutant that keeps the connection: the same client id answers again.)"""
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(master.port)))
    for node in (master, replica):
        node.workdir.mkdir()
        node.start()
    pipe = RedisPipe(RedisLink(parse_redis_url(replica.url), timeout_s=1), timeout_s=1)
    try:
        first = await pipe.call("CLIENT", "ID")
        with pytest.raises(ResponseError, match=r"^READONLY"):
            await pipe.call("SET", "k", "v")
        assert await pipe.call("CLIENT", "ID") != first
    finally:
        await pipe.aclose()
        for node in (replica, master):
            node.stop()


def test_a_sentinel_port_taken_before_start_is_replaced(tmp_path: Path) -> None:
    """The harness itself: a port picked free and then taken (here by a listener of the test's own)
    gets another, and the deployment starts whole. Before, that sentinel exited at once, the
    others never saw it, and the failed start left four processes running."""
    deployment = SentinelSet(tmp_path / "sentinel")
    taken = deployment.sentinel_ports[0]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        deployment.start()
        try:
            assert deployment.sentinel_ports[0] != taken
            assert f"127.0.0.1:{deployment.sentinel_ports[0]}" in deployment.url
            assert deployment.master_address() == ("127.0.0.1", deployment.master.port)
        finally:
            deployment.stop()
