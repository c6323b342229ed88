"""Several gateways over one real redis-server behave as one gateway."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
import socketio

from gamegw.server.app import PARTS
from tests.conftest import eventually, refusal


def async_(predicate):
    async def check():
        return predicate()

    return check


async def _count(registry, user, n):
    return len(await registry.user_sids(user)) == n


async def test_players_on_two_instances_see_each_others_moves_in_seq_order(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    assert (await a.call("join", {"room": "duel"}))["members"] == ["alice"]
    ack = await b.call("join", {"room": "duel"})
    assert ack["seq"] == 0 and sorted(ack["members"]) == ["alice", "bob"]
    [joined] = await a.wait_for("player_joined")
    assert joined == {"room": "duel", "user": "bob"}

    async def play(p, n):
        return [(await p.call("move", {"room": "duel", "action": {"n": i}}))["seq"] for i in range(n)]

    sa, sb = await asyncio.gather(play(a, 25), play(b, 25))
    assert sorted(sa + sb) == list(range(1, 51))
    for p in (a, b):
        moves = await p.wait_for("move", 50)
        assert [m["seq"] for m in moves] == list(range(1, 51))  # consecutive, in order, no repeats
    assert [m["user"] for m in a.events["move"]] == [m["user"] for m in b.events["move"]]


async def test_sync_and_state_agree_on_every_instance(cluster_factory, players):
    gws = await cluster_factory(3)
    ps = [await players(gw.url, gw.token(f"u{i}")) for i, gw in enumerate(gws)]
    for p in ps:
        await p.call("join", {"room": "r"})
    for i, p in enumerate(ps * 3):
        await p.call("move", {"room": "r", "action": {"i": i}})
    syncs = [await p.call("sync", {"room": "r", "after_seq": 4}) for p in ps]
    assert all(s == syncs[0] for s in syncs)
    assert [e["seq"] for e in syncs[0]["events"]] == [5, 6, 7, 8, 9] and syncs[0]["complete"] is True
    states = [await p.call("state", {"room": "r"}) for p in ps]
    assert all(s == states[0] for s in states)
    assert states[0]["seq"] == 9 and sorted(states[0]["state"]["players"]) == ["u0", "u1", "u2"]


async def test_arena_rules_hold_across_instances(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2, game="arena", arena_width=2, arena_height=1)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    await a.call("join", {"room": "g"})
    await b.call("join", {"room": "g"})
    assert (await a.call("move", {"room": "g", "action": {"dir": "right"}}))["error"]["code"] == "invalid_action"
    await b.call("leave", {"room": "g"})
    assert (await a.call("move", {"room": "g", "action": {"dir": "right"}}))["seq"] == 1
    assert (await a.call("state", {"room": "g"}))["state"]["players"] == {"alice": [1, 0]}


async def admin(gw, method: str, path: str, body=None, token: str | None = None):
    token = token or gw.token("ops", role="admin")
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.url + path, json=body,
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


async def test_connections_list_shows_the_whole_cluster(cluster_factory, players):
    gws = await cluster_factory(2)
    await players(gws[0].url, gws[0].token("alice"))
    b = await players(gws[1].url, gws[1].token("bob"))
    await b.call("join", {"room": "lobby"})
    for gw in gws:
        status, body = await admin(gw, "GET", "/admin/connections")
        assert status == 200
        seen = {(c["user_id"], c["instance_id"]) for c in body["connections"]}
        assert seen == {("alice", "inst-1"), ("bob", "inst-2")}
    _, body = await admin(gws[0], "GET", "/admin/connections?room=lobby")
    assert [c["user_id"] for c in body["connections"]] == ["bob"]
    assert body["connections"][0]["rooms"] == ["lobby"]
    _, body = await admin(gws[0], "GET", "/admin/connections?instance=inst-1")
    assert [c["user_id"] for c in body["connections"]] == ["alice"]
    status, _ = await admin(gws[0], "GET", "/admin/connections", token=gws[0].token("alice"))
    assert status == 403


async def test_kick_reaches_a_user_on_another_instance(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    status, body = await admin(a_gw, "POST", "/admin/kick", {"user": "bob", "reason": "cheating"})
    assert status == 200
    assert body == {"user": "bob", "count": 1, "instances": {"inst-2": 1}, "unconfirmed": [], "confirmed": True,
                    "ended": 0}
    [reason] = await b.wait_for("disconnect_reason")
    assert reason["code"] == 4503 and reason["reason"] == "kicked" and reason["reconnect"] is False
    [left] = await a.wait_for("player_left")
    assert left == {"room": "r", "user": "bob", "reason": "kicked"}
    _, body = await admin(a_gw, "POST", "/admin/kick", {"user": "nobody"})
    assert body["count"] == 0


async def test_simulate_drop_reaches_another_instance_and_blocks(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    b = await players(b_gw.url, b_gw.token("bob"))
    started = time.monotonic()
    status, body = await admin(a_gw, "POST", "/admin/drop", {"user": "bob", "block_s": 2})
    assert status == 200 and body["count"] == 1 and body["instances"] == {"inst-2": 1}
    await eventually(async_(lambda: not b.client.connected))
    assert "disconnect_reason" not in b.events  # a network fault says nothing
    # while blocked, a reconnect fails as if the network were down: no connect_error, just a cut
    blocked = socketio.AsyncClient(reconnection=False)
    errors = []
    blocked.on("connect_error", errors.append, namespace="/game")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await blocked.connect(a_gw.url, namespaces=["/game"], auth={"token": a_gw.token("bob")},
                              transports=["websocket"], wait_timeout=2)
    await blocked.shutdown()
    assert errors == []
    # once the block is over, bob comes back
    await asyncio.sleep(max(0.0, started + 2.2 - time.monotonic()))
    back = await players(b_gw.url, b_gw.token("bob"))
    [session] = await back.wait_for("session")
    assert session["user"] == "bob"


async def test_per_user_limit_holds_across_instances(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    first = await players(a_gw.url, a_gw.token("alice"))
    second = await players(b_gw.url, b_gw.token("alice"))
    [reason] = await first.wait_for("disconnect_reason")
    assert reason == {"code": 4504, "reason": "session_replaced", "reconnect": False}
    assert second.client.connected
    registry = a_gw.app[PARTS].registry
    await eventually(lambda: _count(registry, "alice", 1))
    assert [c.instance_id for c in await registry.list(user_id="alice")] == ["inst-2"]


async def test_refuse_policy_holds_across_instances(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2, on_connection_limit="refuse")
    await players(a_gw.url, a_gw.token("alice"))
    err = await refusal(b_gw.url, auth={"token": b_gw.token("alice")})
    assert err["message"] == "connection_limit" and err["data"]["code"] == 4504


async def test_a_killed_instance_leaves_no_entries(process_factory, cluster_factory, players):
    [survivor] = await cluster_factory(1, grace_s=1)
    doomed = await process_factory("doomed", GAMEGW_GRACE_S="1")
    a = await players(survivor.url, survivor.token("alice"))
    b = await players(doomed.url, survivor.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    registry = survivor.app[PARTS].registry
    assert {c.instance_id for c in await registry.list()} == {"inst-1", "doomed"}
    started = time.monotonic()
    doomed.kill(signal.SIGKILL)
    # within 2 x heartbeat TTL + interval the survivors turn bob's connection into a drop ...
    [dropped] = await a.wait_for("player_disconnected", timeout=10)
    detected = time.monotonic() - started
    assert dropped == {"room": "r", "user": "bob", "grace_s": 1.0}
    assert [(c.user_id, c.state) for c in await registry.list(user_id="bob")] == [("bob", "grace")]
    # ... and once grace is over (bob did not come back), bob leaves, once, and nothing is left
    [left] = await a.wait_for("player_left", timeout=10)
    assert left == {"room": "r", "user": "bob", "reason": "timeout"}
    await eventually(lambda: _only(registry, ["alice"]))
    assert await registry.user_sids("bob") == []
    assert (await a.call("join", {"room": "r"}))["members"] == ["alice"]

    async def instances_gone():
        _, body = await admin(survivor, "GET", "/admin/instances")
        return [i["instance"] for i in body["instances"]] == ["inst-1"]

    await eventually(instances_gone, timeout=10)
    assert (await a.call("move", {"room": "r", "action": {}}))["ok"] is True
    await a.wait_for("move")  # after any second player_left sent so far
    assert len(a.events["player_left"]) == 1
    # server/cluster/control.py: the last beat expires TTL after it was written (at most one
    # interval before the kill), and a survivor reaps once it has seen it missing for one more TTL
    ttl_s, interval_s = survivor.settings.heartbeat_ttl_s, survivor.settings.heartbeat_interval_s
    assert (ttl_s, interval_s) == (1.0, 0.2)  # the figures of the process that died, too (conftest)
    assert 2 * ttl_s - interval_s <= detected < 2 * ttl_s + interval_s + 1.0, detected  # 1 s for the rest


async def _only(registry, users):
    return sorted(c.user_id for c in await registry.list()) == users
