"""The Redis bus (cluster mode): a room's moves reach its local members in seq order, each once,
when pub/sub loses some (read back from the room's log) or repeats some (dropped); and the
instance-to-instance messages (probe, control request and answer, room events) round-trip.

Pub/sub loss is made for real: the instance is taken out of the room's routing set in Redis, so
the moves' scripts log them and publish them to nobody."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from redis.asyncio import Redis

from gamegw.server.app import PARTS
from gamegw.server.cluster.bus import RedisBus
from gamegw.server.state.keys import Keys
from gamegw.server.state.rooms import MoveEvent, move_json
from tests.conftest import eventually


async def counters(url: str) -> dict[str, float]:
    wanted = ("gamegw_move_gaps_total", "gamegw_moves_missing_total", "gamegw_duplicate_moves_total",
              "gamegw_deliveries_total", "gamegw_bus_probe_failures_total")
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        lines = (await resp.text()).splitlines()
    return {name: float(line.split()[1]) for line in lines for name in wanted if line.startswith(name + " ")}


def seqs(player: Any, room: str = "r") -> list[int]:
    return [m["seq"] for m in player.events["move"] if m["room"] == room]


async def room_here(cluster_factory: Any, players: Any, redis_server: Any, redis_prefix: str, **settings: Any
                    ) -> tuple[Any, RedisBus, Any, Redis, Keys]:
    """One cluster instance, alice in room "r" on it, the bus, and a Redis client of the test's own."""
    [gw] = await cluster_factory(1, **settings)
    bus = gw.app[PARTS].bus
    assert isinstance(bus, RedisBus)
    alice = await players(gw.url, gw.token("alice"))
    await alice.call("join", {"room": "r"})
    return gw, bus, alice, Redis.from_url(redis_server.url, decode_responses=True), Keys(redis_prefix)


async def move(player: Any, n: int, room: str = "r") -> int:
    ack = await player.call("move", {"room": room, "action": {"n": n}})
    assert ack["ok"] is True
    return int(ack["seq"])


async def lost_moves(player: Any, redis: Redis, keys: Keys, iid: str, ns: list[int], room: str = "r") -> list[int]:
    """Moves logged but published to nobody (this instance out of the room's routing meanwhile)."""
    await redis.srem(keys.room(room, "insts"), iid)
    made = [await move(player, n, room) for n in ns]
    await redis.sadd(keys.room(room, "insts"), iid)
    return made


async def a_gap_of_two(bus: RedisBus, alice: Any, redis: Redis, keys: Keys) -> MoveEvent:
    """Move 1 delivered, moves 2 and 3 logged but lost: the log's entry of move 3, for the test to send."""
    await move(alice, 1)
    await alice.wait_for("move", 1)
    await lost_moves(alice, redis, keys, "inst-1", [2, 3])
    assert bus.rooms is not None
    [third] = (await bus.rooms.events_after("r", 2))[0]
    return third


async def test_moves_lost_by_pubsub_are_read_from_the_log_in_order_once(
        cluster_factory, players, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw.bus")
    gw, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        assert [await move(alice, 1), await move(alice, 2)] == [1, 2]
        await alice.wait_for("move", 2)
        assert await lost_moves(alice, redis, keys, "inst-1", [3, 4, 5]) == [3, 4, 5]
        await asyncio.sleep(0.2)
        assert seqs(alice) == [1, 2]  # lost indeed
        assert await move(alice, 6) == 6  # seq 6 after 2: a gap, filled from the log
        await alice.wait_for("move", 6)
        await asyncio.sleep(0.1)
        assert seqs(alice) == [1, 2, 3, 4, 5, 6]
        assert [m["action"] for m in alice.events["move"]] == [{"n": n} for n in range(1, 7)]
        assert bus.delivered() == {"r": 6}
        got = await counters(gw.url)
        assert (got["gamegw_move_gaps_total"], got["gamegw_moves_missing_total"]) == (1.0, 0.0)
        assert got["gamegw_deliveries_total"] == 6.0
        [filled] = [r for r in caplog.records if r.getMessage() == "gap_filled"]
        assert (filled.levelno, filled.gamegw_fields) == (  # type: ignore[attr-defined]
            logging.INFO, {"room": "r", "from_seq": 3, "to_seq": 6, "missing": 0})

        # a repeat of a move already delivered (pub/sub and the log both carried it) is dropped
        assert bus.rooms is not None
        [fifth, sixth] = (await bus.rooms.events_after("r", 4))[0]
        await redis.publish(keys.channel("inst-1"), f"Mr\n6\n{sixth.json}")
        await redis.publish(keys.channel("inst-1"), f"Mr\n5\n{fifth.json}")
        await eventually(lambda: _counter_is(gw.url, "gamegw_duplicate_moves_total", 2.0))
        assert await move(alice, 7) == 7
        await alice.wait_for("move", 7)
        assert seqs(alice) == [1, 2, 3, 4, 5, 6, 7]
    finally:
        await redis.aclose()


async def _counter_is(url: str, name: str, value: float) -> bool:
    return (await counters(url)).get(name) == value


async def test_resync_delivers_what_pubsub_missed_for_rooms_with_members_here(
        cluster_factory, players, redis_server, redis_prefix) -> None:
    gw, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        await move(alice, 1)
        await alice.wait_for("move", 1)
        assert await bus.resync(["r", "elsewhere"]) == 0  # nothing missed; no member of "elsewhere" here
        await alice.call("join", {"room": "s"})
        await move(alice, 1, "s")
        await alice.wait_for("move", 2)
        await lost_moves(alice, redis, keys, "inst-1", [2, 3])
        await lost_moves(alice, redis, keys, "inst-1", [2], "s")
        assert await bus.resync(["elsewhere", "r", "s"]) == 2
        await alice.wait_for("move", 5)
        await asyncio.sleep(0.1)
        assert seqs(alice) == [1, 2, 3] and seqs(alice, "s") == [1, 2]
        assert bus.delivered() == {"r": 3, "s": 2}
        assert await bus.resync(["r", "s"]) == 0
        got = await counters(gw.url)
        assert (got["gamegw_move_gaps_total"], got["gamegw_moves_missing_total"]) == (0.0, 0.0)
    finally:
        await redis.aclose()


async def test_a_move_for_a_room_without_members_here_is_not_remembered(
        cluster_factory, players, redis_server, redis_prefix) -> None:
    gw, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        await redis.publish(keys.channel("inst-1"), 'Mnobody\n9\n{"room":"nobody","seq":9}')
        await move(alice, 1)
        await alice.wait_for("move", 1)
        assert bus.delivered() == {"r": 1}
        bus.forget_room("r")  # the last member left: whoever joins next starts from its own join
        assert bus.delivered() == {}
        assert (await counters(gw.url))["gamegw_deliveries_total"] == 1.0
    finally:
        await redis.aclose()


async def test_probe_request_and_room_events_round_trip(cluster_factory, players, redis_server, redis_prefix) -> None:
    gw, bus, alice, redis, _ = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        assert await bus.probe() is True
        bob = await players(gw.url, gw.token("bob"))
        await bob.call("join", {"room": "r"})
        # a request to ourselves: carried out by the control handler, answered on our channel
        answer = await bus.request("inst-1", {"op": "kick", "user": "bob", "reason": "test"}, 2.0)
        assert answer is not None and (answer["instance"], answer["count"]) == ("inst-1", 1)
        assert await bus.request("inst-none", {"op": "kick", "user": "bob", "reason": "x"}, 0.2) is None
        await bus.emit_room("r", "notice", {"text": "hi"}, skip_sid=None)
        [notice] = await alice.wait_for("notice")
        assert notice == {"text": "hi"}
        assert (await counters(gw.url))["gamegw_bus_probe_failures_total"] == 0.0
    finally:
        await redis.aclose()


async def test_moves_gone_from_the_log_too_are_counted_missing(cluster_factory, players, redis_server,
                                                               redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw.bus")
    [gw] = await cluster_factory(1, move_log_size=2)
    bus = gw.app[PARTS].bus
    alice = await players(gw.url, gw.token("alice"))
    await alice.call("join", {"room": "r"})
    redis, keys = Redis.from_url(redis_server.url, decode_responses=True), Keys(redis_prefix)
    try:
        await move(alice, 1)
        await alice.wait_for("move", 1)
        await lost_moves(alice, redis, keys, "inst-1", [2, 3, 4])
        await move(alice, 5)  # the gap; the log keeps 4 and 5 only: 2 and 3 are gone for good
        await alice.wait_for("move", 3)
        await asyncio.sleep(0.1)
        assert seqs(alice) == [1, 4, 5]
        assert bus.delivered() == {"r": 5}
        got = await counters(gw.url)
        assert (got["gamegw_move_gaps_total"], got["gamegw_moves_missing_total"]) == (1.0, 2.0)
        [filled] = [r for r in caplog.records if r.getMessage() == "gap_filled"]
        assert (filled.levelno, filled.gamegw_fields) == (  # type: ignore[attr-defined]
            logging.WARNING, {"room": "r", "from_seq": 2, "to_seq": 5, "missing": 2})
    finally:
        await redis.aclose()


async def test_a_move_arriving_while_a_gap_is_read_is_held_and_sent_after_it(
        cluster_factory, players, redis_server, redis_prefix) -> None:
    _, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        third = await a_gap_of_two(bus, alice, redis, keys)
        # seq 3 opens the gap; seq 4 (another instance's move, logged after the gap's read) comes
        # in the same batch, while the read is under way: it is held, then sent after 2 and 3
        fourth = move_json("r", 4, "bob", '{"n":4}', 0)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.publish(keys.channel("inst-1"), f"Mr\n3\n{third.json}")
            pipe.publish(keys.channel("inst-1"), f"Mr\n4\n{fourth}")
            await pipe.execute()
        await alice.wait_for("move", 4)
        await asyncio.sleep(0.1)
        assert seqs(alice) == [1, 2, 3, 4]
        assert alice.events["move"][-1] == {"room": "r", "seq": 4, "user": "bob", "action": {"n": 4}, "ts": 0}
        assert bus.delivered() == {"r": 4}
    finally:
        await redis.aclose()


def fields(caplog: Any, message: str) -> list[tuple[int, dict[str, Any]]]:
    return [(r.levelno, r.gamegw_fields) for r in caplog.records if r.getMessage() == message]


async def test_a_log_read_that_fails_still_sends_the_held_moves(
        cluster_factory, players, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw.bus")
    gw, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        third = await a_gap_of_two(bus, alice, redis, keys)
        log_key = keys.room("r", "log")
        await redis.delete(log_key)
        await redis.set(log_key, "not a stream")  # the gap's read fails: WRONGTYPE
        await redis.publish(keys.channel("inst-1"), f"Mr\n3\n{third.json}")
        await alice.wait_for("move", 2)
        await redis.delete(log_key)
        assert await move(alice, 4) == 4
        await alice.wait_for("move", 3)
        assert seqs(alice) == [1, 3, 4]  # 2 is lost for good; 3, held, went out all the same
        assert fields(caplog, "gap_unfilled") == [(logging.WARNING, {"room": "r", "error": "ResponseError"})]
        assert fields(caplog, "gap_filled") == [
            (logging.WARNING, {"room": "r", "from_seq": 2, "to_seq": 3, "missing": 1})]
        assert (await counters(gw.url))["gamegw_moves_missing_total"] == 1.0
    finally:
        await redis.aclose()


async def test_a_log_read_that_outlasts_the_timeout_is_not_waited_for(
        cluster_factory, players, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw.bus")
    # no heartbeat or probe falls in the pause below: the instance stays up throughout
    _, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix,
                                                  redis_timeout_s=0.2, heartbeat_interval_s=5.0,
                                                  heartbeat_ttl_s=15.0, bus_probe_interval_s=30.0)
    try:
        third = await a_gap_of_two(bus, alice, redis, keys)
        # seq 3 reaches the bus, then Redis holds every command for 0.8 s (4 x redis_timeout_s):
        # the gap's read gets no answer in time
        async with redis.pipeline(transaction=False) as pipe:
            pipe.publish(keys.channel("inst-1"), f"Mr\n3\n{third.json}")
            pipe.client_pause(800, all=True)
            await pipe.execute()
        await alice.wait_for("move", 2)
        assert seqs(alice) == [1, 3]
        assert fields(caplog, "gap_unfilled") == [(logging.WARNING, {"room": "r", "error": "timeout"})]
        await redis.ping()  # answered once the pause is over
        assert await move(alice, 4) == 4
        await alice.wait_for("move", 3)
        assert seqs(alice) == [1, 3, 4]
        assert fields(caplog, "gap_filled") == [
            (logging.WARNING, {"room": "r", "from_seq": 2, "to_seq": 3, "missing": 1})]
    finally:
        await redis.aclose()


async def test_a_probe_or_an_answer_nobody_waits_for_is_ignored(
        cluster_factory, players, redis_server, redis_prefix, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gamegw.bus")
    _, bus, alice, redis, keys = await room_here(cluster_factory, players, redis_server, redis_prefix)
    try:
        await redis.publish(keys.channel("inst-1"), "Pnobody-waits-for-this")
        await redis.publish(keys.channel("inst-1"), 'R{"id":"nobody-waits-for-this","instance":"inst-2"}')
        assert await move(alice, 1) == 1
        await alice.wait_for("move", 1)  # a later message: the two before it were handled
        assert fields(caplog, "listener_lost") == []
        assert await bus.probe() is True
    finally:
        await redis.aclose()


async def test_room_events_skip_their_sender_and_tell_of_members_elsewhere(
        cluster_factory, players, redis_server, redis_prefix) -> None:
    """A room event skips the connection it names; one naming a connection of another instance
    tells this one that the room has members elsewhere, so that with Redis failed (``down``)
    its moves are refused rather than given seqs of this instance's own. (No heartbeat falls
    in the test: it would re-assert at once.)"""
    gw, bus, alice, redis, _ = await room_here(cluster_factory, players, redis_server, redis_prefix,
                                               heartbeat_interval_s=5.0, heartbeat_ttl_s=15.0)
    try:
        bob = await players(gw.url, gw.token("bob"))
        await bob.call("join", {"room": "r"})
        await bus.emit_room("r", "notice", {"n": 1}, skip_sid=alice.client.namespaces["/game"])
        await bus.emit_room("r", "notice", {"n": 2}, skip_sid=None)
        assert await alice.wait_for("notice") == [{"n": 2}]  # n 1 came first, to bob only
        assert await bob.wait_for("notice", 2) == [{"n": 1}, {"n": 2}]
        rooms = gw.app[PARTS].rooms
        rooms.down = True  # events from here only: the room is this instance's alone, it plays on
        assert (await alice.call("move", {"room": "r", "action": {"n": 1}}))["seq"] == 1
    finally:
        await redis.aclose()


async def test_a_room_event_from_another_instance_stops_offline_moves(
        cluster_factory, players, redis_server, redis_prefix) -> None:
    gw, bus, alice, redis, _ = await room_here(cluster_factory, players, redis_server, redis_prefix,
                                               heartbeat_interval_s=5.0, heartbeat_ttl_s=15.0)
    try:
        await bus.emit_room("r", "notice", {"n": 1}, skip_sid="a-connection-elsewhere")
        assert await alice.wait_for("notice") == [{"n": 1}]
        gw.app[PARTS].rooms.down = True
        ack = await alice.call("move", {"room": "r", "action": {"n": 1}})
        assert (ack["ok"], ack["error"]["code"]) == (False, "unavailable")
    finally:
        await redis.aclose()
