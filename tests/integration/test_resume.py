"""Drops, grace and resume, with real clients, real gateways and a real Redis.

A drop is made the way a network fault makes one: the admin API cuts the TCP connection with no
disconnect packet (``simulate-drop``), or a raw Engine.IO client stops answering pings. The
player's client then reconnects as a stock client does, with ``auth.last_seq``.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from gamegw.server.app import PARTS
from tests.conftest import eventually


async def drop(gw, user: str, block_s: float = 0) -> dict:
    token = gw.token("ops", role="admin")
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/admin/drop", json={"user": user, "block_s": block_s},
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            return await resp.json()


def gone(player):
    async def check():
        return not player.client.connected

    return check


async def setup_duel(alice_gw, bob_gw, players):
    a = await players(alice_gw.url, alice_gw.token("alice"))
    b = await players(bob_gw.url, bob_gw.token("bob"))
    await a.call("join", {"room": "duel"})
    await b.call("join", {"room": "duel"})
    for i in range(3):
        await a.call("move", {"room": "duel", "action": {"i": i}})
    await b.wait_for("move", 3)
    return a, b


async def check_resume(alice_gw, bob_gw, back_gw, players):
    """bob drops, alice plays on, bob comes back (on back_gw) and gets exactly what he missed."""
    a, b = await setup_duel(alice_gw, bob_gw, players)
    seen = b.events["move"][-1]["seq"]
    assert (await drop(bob_gw, "bob"))["count"] == 1
    await eventually(gone(b))
    [disconnected] = await a.wait_for("player_disconnected")
    assert disconnected == {"room": "duel", "user": "bob", "grace_s": alice_gw.settings.grace_s}
    for i in range(3, 8):
        await a.call("move", {"room": "duel", "action": {"i": i}})

    back = await players(back_gw.url, back_gw.token("bob"), auth={"token": back_gw.token("bob"),
                                                                   "last_seq": {"duel": seen}})
    [session] = await back.wait_for("session")
    assert session["resumed"] is True and session["rooms"] == ["duel"]
    replay = await back.wait_for("move", 5)
    assert [m["seq"] for m in replay] == [4, 5, 6, 7, 8]  # exactly the missed ones, in order
    assert [m["action"]["i"] for m in replay] == [3, 4, 5, 6, 7]
    [reconnected] = await a.wait_for("player_reconnected")
    assert reconnected == {"room": "duel", "user": "bob"}
    # play goes on, without a gap, and the room never saw bob leave
    assert (await back.call("move", {"room": "duel", "action": {"i": 8}}))["seq"] == 9
    moves = await back.wait_for("move", 6)
    assert [m["seq"] for m in moves] == [4, 5, 6, 7, 8, 9]
    await a.wait_for("move", 9)
    assert "player_left" not in a.events
    assert (await back.call("state", {"room": "duel"}))["state"]["players"] == ["alice", "bob"]
    return a, back, session


async def test_resume_on_the_same_instance(gateway, players):
    _, _, session = await check_resume(gateway, gateway, gateway, players)
    registry = gateway.app[PARTS].registry
    [entry] = await registry.list(user_id="bob")
    assert entry.state == "connected" and entry.resumed is True and entry.sid == session["sid"]


async def test_resume_on_another_instance(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    _, _, session = await check_resume(a_gw, b_gw, a_gw, players)  # bob was on inst-2, comes back on inst-1
    registry = a_gw.app[PARTS].registry
    [entry] = await registry.list(user_id="bob")
    assert (entry.instance_id, entry.state, entry.sid) == ("inst-1", "connected", session["sid"])


async def test_resume_without_last_seq_then_sync(gateway, players):
    a, b = await setup_duel(gateway, gateway, players)
    await drop(gateway, "bob")
    await eventually(gone(b))
    await a.call("move", {"room": "duel", "action": {"i": 3}})
    back = await players(gateway.url, gateway.token("bob"))
    [session] = await back.wait_for("session")
    assert session["resumed"] is True
    ack = await back.call("sync", {"room": "duel", "after_seq": 3})
    assert [e["seq"] for e in ack["events"]] == [4] and ack["complete"] is True


async def test_after_grace_a_fresh_session_and_one_player_left(cluster_factory, players):
    gws = await cluster_factory(3, grace_s=0.5)
    a = await players(gws[0].url, gws[0].token("alice"))
    c = await players(gws[2].url, gws[2].token("carol"))
    b = await players(gws[1].url, gws[1].token("bob"))
    for p in (a, b, c):
        await p.call("join", {"room": "r"})
    await drop(gws[0], "bob")
    await eventually(gone(b))
    for p in (a, c):
        [left] = await p.wait_for("player_left", timeout=5)
        assert left == {"room": "r", "user": "bob", "reason": "timeout"}
    await asyncio.sleep(0.6)  # three sweepers raced for bob's expiry: only one may have won
    assert len(a.events["player_left"]) == 1 and len(c.events["player_left"]) == 1
    back = await players(gws[1].url, gws[1].token("bob"), auth={"token": gws[1].token("bob"),
                                                                  "last_seq": {"r": 0}})
    [session] = await back.wait_for("session")
    assert session["resumed"] is False and session["rooms"] == []
    assert sorted((await a.call("state", {"room": "r"}))["state"]["players"]) == ["alice", "carol"]


async def test_a_silent_client_is_detected_within_ping_interval_plus_timeout(gateway_factory, players):
    # (python-engineio's own client gives up on a server whose interval + timeout is under ~1 s)
    gw = await gateway_factory(ping_interval_s=0.5, ping_timeout_s=1.0)
    a = await players(gw.url, gw.token("alice"))
    await a.call("join", {"room": "r"})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
        assert (await ws.receive_str()).startswith("0")  # Engine.IO open
        await ws.send_str("40/game," + orjson.dumps({"token": gw.token("bob")}).decode())
        assert (await ws.receive_str()).startswith("40/game,")
        assert (await ws.receive_str()).startswith('42/game,["session"')
        await ws.send_str("42/game,1" + orjson.dumps(["join", {"room": "r"}]).decode())  # ack id 1
        while (reply := await ws.receive_str()) == "2":  # a ping: read, never answered
            pass
        assert reply.startswith("43/game,1[")
        started = time.monotonic()
        # from now on this client is a black hole: it reads nothing and answers no ping
        [disconnected] = await a.wait_for("player_disconnected", timeout=5)
        elapsed = time.monotonic() - started
        await ws.close()
    assert disconnected["user"] == "bob"
    assert elapsed < 0.5 + 1.0 + 0.5, elapsed  # interval + timeout, with slack for the test machine
    [entry] = await gw.app[PARTS].registry.list(user_id="bob")
    assert entry.state == "grace"


async def test_a_new_connection_takes_over_a_stale_one(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    a, stale = await setup_duel(a_gw, b_gw, players)
    fresh = await players(a_gw.url, a_gw.token("bob"))
    [reason] = await stale.wait_for("disconnect_reason")
    assert reason == {"code": 4504, "reason": "session_replaced", "reconnect": False}
    [session] = await fresh.wait_for("session")
    assert session["resumed"] is True and session["rooms"] == ["duel"]
    assert (await fresh.call("move", {"room": "duel", "action": {}}))["seq"] == 4
    await a.wait_for("move", 4)
    assert (await a.call("move", {"room": "duel", "action": {}}))["seq"] == 5  # after anything the takeover sent
    await a.wait_for("move", 5)
    assert not {"player_left", "player_disconnected"} & set(a.events)
    registry = a_gw.app[PARTS].registry
    await eventually(lambda: _states(registry, "bob", [("inst-1", "connected")]))


async def _states(registry, user, expected):
    return [(c.instance_id, c.state) for c in await registry.list(user_id=user)] == expected


async def test_several_connections_are_several_sessions(gateway_factory, players):
    gw = await gateway_factory(max_connections_per_user=2)
    one = await players(gw.url, gw.token("bob"))
    two = await players(gw.url, gw.token("bob"))
    [s1], [s2] = await one.wait_for("session"), await two.wait_for("session")
    assert s1["session_id"] != s2["session_id"] and not s2["resumed"]


async def test_drop_and_resume_metrics(gateway, players):
    a, b = await setup_duel(gateway, gateway, players)
    await drop(gateway, "bob")
    await eventually(gone(b))
    await a.call("move", {"room": "duel", "action": {}})
    back = await players(gateway.url, gateway.token("bob"), auth={"token": gateway.token("bob"),
                                                                   "last_seq": {"duel": 3}})
    await back.wait_for("move", 1)
    text = gateway.app[PARTS].metrics.render().decode()
    assert 'gamegw_drops_total{cause="simulated_drop"} 1.0' in text
    assert 'gamegw_resumes_total{result="resumed"} 1.0' in text
    assert "gamegw_replayed_moves_total 1.0" in text
    assert "gamegw_resume_seconds_count 1.0" in text


async def test_another_users_token_never_gets_the_session(gateway, players):
    _, b = await setup_duel(gateway, gateway, players)
    await drop(gateway, "bob")
    await eventually(gone(b))
    mallory = await players(gateway.url, gateway.token("mallory"), auth={"token": gateway.token("mallory"),
                                                                        "last_seq": {"duel": 0}})
    [session] = await mallory.wait_for("session")
    assert session["user"] == "mallory" and session["resumed"] is False and session["rooms"] == []
    # a replay would have come before this ack, on the same connection
    assert (await mallory.call("state", {"room": "duel"}))["error"]["code"] == "not_in_room"
    assert "move" not in mallory.events
    back = await players(gateway.url, gateway.token("bob"))  # bob's session is still there for bob
    assert (await back.wait_for("session"))[0]["resumed"] is True


async def test_users_of_a_killed_instance_resume_on_a_survivor(process_factory, cluster_factory, players):
    [survivor] = await cluster_factory(1, grace_s=10)
    doomed = await process_factory("doomed", GAMEGW_GRACE_S="10")
    a = await players(survivor.url, survivor.token("alice"))
    b = await players(doomed.url, survivor.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    await a.call("move", {"room": "r", "action": {"i": 1}})
    await b.wait_for("move", 1)
    doomed.kill(9)
    await eventually(gone(b), timeout=10)
    await a.call("move", {"room": "r", "action": {"i": 2}})  # bob misses this one
    back = await players(survivor.url, survivor.token("bob"), auth={"token": survivor.token("bob"),
                                                                     "last_seq": {"r": 1}})
    [session] = await back.wait_for("session")
    assert session["resumed"] is True and session["rooms"] == ["r"]
    [missed] = await back.wait_for("move", 1)
    assert missed["seq"] == 2 and missed["action"] == {"i": 2}
    assert (await back.call("move", {"room": "r", "action": {"i": 3}}))["seq"] == 3
    await a.wait_for("move", 3)  # after any player_left bob's resume could have caused
    assert "player_left" not in a.events
