"""Server-published events (issue 18): ``POST /admin/publish {room, action}`` sends a ``move`` to
the room with the room's next seq and the publisher's ``sub`` as ``user``, logged, replayed on
resume and returned by ``sync`` like any move, on every instance that has members."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import RedisServer, eventually
from tests.integration.test_dashboard import live, of_type


async def publish(url: str, token: str | None, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/admin/publish", json=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def room_on_two_instances(cluster_factory: Any, players: Any, room: str) -> tuple[Any, Any, Any, Any]:
    """Two gateways over one Redis, alice on the first and bob on the second, both in ``room``."""
    a_gw, b_gw = await cluster_factory(2)
    alice = await players(a_gw.url, a_gw.token("alice"))
    bob = await players(b_gw.url, b_gw.token("bob"))
    await alice.call("join", {"room": room})
    await bob.call("join", {"room": room})
    return a_gw, b_gw, alice, bob


def moves(player: Any, room: str) -> list[tuple[int, str, Any]]:
    return [(m["seq"], m["user"], m["action"]) for m in player.events["move"] if m["room"] == room]


async def test_a_published_event_reaches_the_members_on_both_instances(cluster_factory, players) -> None:
    a_gw, b_gw, alice, bob = await room_on_two_instances(cluster_factory, players, "duel")
    assert (await alice.call("move", {"room": "duel", "action": {"x": 1}}))["seq"] == 1

    ops = a_gw.token("ops", role="admin")
    assert await publish(b_gw.url, ops, {"room": "duel", "action": {"round": "over"}}) == (
        200, {"ok": True, "room": "duel", "seq": 2})
    assert (await bob.call("move", {"room": "duel", "action": {"x": 2}}))["seq"] == 3
    assert await publish(a_gw.url, ops, {"room": "duel", "action": {"round": 2}}) == (
        200, {"ok": True, "room": "duel", "seq": 4})

    expected = [(1, "alice", {"x": 1}), (2, "ops", {"round": "over"}), (3, "bob", {"x": 2}),
                (4, "ops", {"round": 2})]
    for player in (alice, bob):
        await player.wait_for("move", 4)
        assert moves(player, "duel") == expected
        assert {"room", "seq", "user", "action", "ts"} == set(player.events["move"][1])


async def test_published_and_played_moves_interleave_without_gaps(cluster_factory, players) -> None:
    """Publishes through both instances race the players' moves: one gapless seq order, the
    same on both instances, with each publish's answered seq where its event sits."""
    a_gw, b_gw, alice, bob = await room_on_two_instances(cluster_factory, players, "race")
    ops = a_gw.token("ops", role="admin")

    async def play(player: Any, name: str) -> None:
        for i in range(10):
            assert (await player.call("move", {"room": "race", "action": {"by": name, "i": i}}))["ok"]

    async def announce(url: str, name: str) -> list[int]:
        answered = []
        for i in range(10):
            status, answer = await publish(url, ops, {"room": "race", "action": {"by": name, "i": i}})
            assert status == 200, answer
            answered.append(answer["seq"])
        return answered

    *_, from_a, from_b = await asyncio.gather(play(alice, "alice"), play(bob, "bob"),
                                              announce(a_gw.url, "srv-a"), announce(b_gw.url, "srv-b"))
    for player in (alice, bob):
        await player.wait_for("move", 40)
    seen = moves(alice, "race")
    assert seen == moves(bob, "race")
    assert [seq for seq, _, _ in seen] == list(range(1, 41))
    by_seq = {seq: (user, action) for seq, user, action in seen}
    for name, answered in (("srv-a", from_a), ("srv-b", from_b)):
        assert [by_seq[seq] for seq in answered] == [("ops", {"by": name, "i": i}) for i in range(10)]
    for name in ("alice", "bob"):  # each source's own order is kept
        assert [a["i"] for _, u, a in seen if u == name] == list(range(10))


async def test_a_player_who_was_away_gets_the_published_event_on_resume(cluster_factory, players) -> None:
    a_gw, _b_gw, alice, bob = await room_on_two_instances(cluster_factory, players, "duel")
    await alice.call("move", {"room": "duel", "action": {"x": 1}})
    await bob.wait_for("move", 1)
    ops = a_gw.token("ops", role="admin")
    async with aiohttp.ClientSession() as http:
        async with http.post(a_gw.url + "/admin/drop", json={"user": "bob"},
                             headers={"Authorization": f"Bearer {ops}"}) as resp:
            assert resp.status == 200
    await alice.wait_for("player_disconnected")
    # bob is in grace (no connection, still seated): the room exists, the event is logged for him
    assert await publish(a_gw.url, ops, {"room": "duel", "action": {"note": "while away"}}) == (
        200, {"ok": True, "room": "duel", "seq": 2})

    back = await players(a_gw.url, auth={"token": a_gw.token("bob"), "last_seq": {"duel": 1}})
    [session] = await back.wait_for("session")
    assert session["resumed"] is True
    await back.wait_for("move", 1)
    assert moves(back, "duel") == [(2, "ops", {"note": "while away"})]
    ack = await back.call("sync", {"room": "duel", "after_seq": 0})
    assert ack["ok"] and ack["complete"]
    assert [(e["seq"], e["user"], e["action"]) for e in ack["events"]] == [
        (1, "alice", {"x": 1}), (2, "ops", {"note": "while away"})]


@pytest.mark.parametrize("mode", ["memory", "cluster"])
async def test_publish_in_either_mode_and_its_refusals(mode: str, gateway_factory, cluster_factory,
                                                       players) -> None:
    gw = (await gateway_factory()) if mode == "memory" else (await cluster_factory(1))[0]
    alice = await players(gw.url, gw.token("alice"))
    await alice.call("join", {"room": "lobby"})
    ops = gw.token("ops", role="admin")
    assert await publish(gw.url, ops, {"room": "lobby", "action": {"motd": "hi"}}) == (
        200, {"ok": True, "room": "lobby", "seq": 1})
    await alice.wait_for("move")
    assert moves(alice, "lobby") == [(1, "ops", {"motd": "hi"})]
    ack = await alice.call("sync", {"room": "lobby", "after_seq": 0})
    assert [(e["seq"], e["user"]) for e in ack["events"]] == [(1, "ops")]

    def error(code: str) -> Any:
        return lambda answer: answer["error"]["code"] == code

    good = {"room": "lobby", "action": {"x": 1}}
    refusals: list[tuple[str | None, Any, int, str]] = [
        (None, good, 401, "token_missing"),
        (gw.token("alice"), good, 403, "forbidden"),  # a player's token, not an admin's
        (ops, [1, 2], 400, "bad_request"),
        (ops, {"action": {"x": 1}}, 400, "bad_request"),
        (ops, {"room": "", "action": {"x": 1}}, 400, "bad_request"),
        (ops, {"room": "a\nb", "action": {"x": 1}}, 400, "bad_request"),
        (ops, {"room": "r" * 65, "action": {"x": 1}}, 400, "bad_request"),
        (ops, {"room": "lobby", "action": [1]}, 400, "bad_request"),
        (ops, {"room": "lobby"}, 400, "bad_request"),
        (ops, {"room": "lobby", "action": {"x": "y" * 5000}}, 413, "payload_too_large"),
        (ops, {"room": "nowhere", "action": {"x": 1}}, 404, "room_not_found"),
    ]
    for token, body, status, code in refusals:
        got_status, answer = await publish(gw.url, token, body)
        assert (got_status, answer["error"]["code"]) == (status, code), body
        assert answer["error"]["message"]
    # none of them reached the room or took a seq
    assert (await alice.call("move", {"room": "lobby", "action": {"x": 2}}))["seq"] == 2
    await alice.wait_for("move", 2)
    assert len(alice.events["move"]) == 2

    # a room whose last member left is gone: nothing to publish to
    await alice.call("leave", {"room": "lobby"})
    assert (await publish(gw.url, ops, good))[0] == 404


@pytest.mark.parametrize("mode", ["memory", "cluster"])
async def test_a_stateful_game_ignores_published_events(mode: str, gateway_factory, cluster_factory,
                                                        players) -> None:
    """``arena``: the rules do not see a published action (the publisher has no cell, and the
    action need not be a step); the state stays as it was and the players play on after it."""
    gw = ((await gateway_factory(game="arena")) if mode == "memory"
          else (await cluster_factory(1, game="arena"))[0])
    alice = await players(gw.url, gw.token("alice"))
    await alice.call("join", {"room": "grid"})
    before = await alice.call("state", {"room": "grid"})
    ops = gw.token("ops", role="admin")
    assert await publish(gw.url, ops, {"room": "grid", "action": {"storm": True}}) == (
        200, {"ok": True, "room": "grid", "seq": 1})
    after = await alice.call("state", {"room": "grid"})
    assert (after["seq"], after["state"]) == (1, before["state"])
    ack = await alice.call("move", {"room": "grid", "action": {"dir": "right"}})
    assert ack == {"ok": True, "seq": 2}
    await alice.wait_for("move", 2)
    assert moves(alice, "grid") == [(1, "ops", {"storm": True}), (2, "alice", {"dir": "right", "pos": [1, 0]})]


async def test_published_events_are_counted_apart_from_moves(gateway, players) -> None:
    alice = await players(gateway.url, gateway.token("alice"))
    await alice.call("join", {"room": "lobby"})
    await alice.call("move", {"room": "lobby", "action": {"x": 1}})
    assert (await publish(gateway.url, gateway.token("ops", role="admin"),
                          {"room": "lobby", "action": {"x": 2}}))[0] == 200

    async def counted() -> bool:
        async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as resp:
            text = await resp.text()
        return "gamegw_published_moves_total 1.0" in text and "gamegw_moves_total 1.0" in text

    await eventually(counted)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it stops and starts again with its data."""
    server = RedisServer(tmp_path / "redis", persist=True)
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


async def test_publish_during_a_redis_outage_is_unavailable_and_after_it_takes_the_next_seq(
        cluster_factory, players, own_redis) -> None:
    """While Redis is away a room played on one instance alone gets its seqs from that instance;
    a publish then answers 503 (it cannot be put in that order), and once the moves played
    meanwhile are written back it takes the seq after them."""
    [gw] = await cluster_factory(1, redis_url=own_redis.url, redis_timeout_s=0.5)
    alice = await players(gw.url, gw.token("alice"))
    await alice.call("join", {"room": "solo"})
    ops = gw.token("ops", role="admin")
    assert (await publish(gw.url, ops, {"room": "solo", "action": {"n": 1}}))[1]["seq"] == 1
    own_redis.stop()
    status, answer = await publish(gw.url, ops, {"room": "solo", "action": {"n": 2}})
    assert (status, answer["error"]["code"]) == (503, "unavailable")
    assert await alice.call("move", {"room": "solo", "action": {"offline": True}}) == {"ok": True, "seq": 2}
    own_redis.start()
    answers: list[tuple[int, Any]] = []

    async def published() -> bool:
        answers.append(await publish(gw.url, ops, {"room": "solo", "action": {"n": 3}}))
        return answers[-1][0] == 200

    await eventually(published, timeout=15)
    assert answers[-1] == (200, {"ok": True, "room": "solo", "seq": 3})
    assert {a["error"]["code"] for s, a in answers[:-1]} <= {"unavailable"}
    await alice.wait_for("move", 3)
    assert moves(alice, "solo") == [(1, "ops", {"n": 1}), (2, "alice", {"offline": True}), (3, "ops", {"n": 3})]


async def test_the_dashboard_sees_the_room_move_on_with_a_published_event(cluster_factory, players) -> None:
    a_gw, b_gw = await cluster_factory(2)
    bob = await players(b_gw.url, b_gw.token("bob"))
    await bob.call("join", {"room": "duel"})
    ops = a_gw.token("ops", role="admin")
    async with live(a_gw.url, ops) as stream:
        name, snapshot = await stream.event()
        assert (name, snapshot["rooms"]) == ("snapshot", {"duel": 0})
        assert (await publish(a_gw.url, ops, {"room": "duel", "action": {"x": 1}}))[0] == 200
        await stream.delta(of_type("room", instance="inst-1", room="duel", seq=1))
