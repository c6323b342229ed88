"""The game events of the contract, with real python-socketio clients over a real gateway."""

from __future__ import annotations

import time

import pytest

from gamegw.server.app import PARTS


@pytest.fixture(params=[["websocket"], ["polling", "websocket"]], ids=["websocket", "polling+upgrade"])
def transports(request: pytest.FixtureRequest) -> list[str]:
    return request.param


async def test_session_is_the_first_event(gateway, players, transports):
    p = await players(gateway.url, gateway.token("alice"), transports=transports)
    [session] = await p.wait_for("session")
    assert session["user"] == "alice"
    assert session["sid"] == p.client.get_sid("/game")
    assert session["resumed"] is False and session["rooms"] == []
    assert len(session["session_id"]) == 32
    assert session["grace_s"] == gateway.settings.grace_s
    assert session["heartbeat"] == {"interval_s": gateway.settings.ping_interval_s,
                                    "timeout_s": gateway.settings.ping_timeout_s}


async def test_two_users_see_each_others_moves_in_order(gateway, players, transports):
    a = await players(gateway.url, gateway.token("alice"), transports=transports)
    b = await players(gateway.url, gateway.token("bob"), transports=transports)
    assert (await a.call("join", {"room": "duel"}))["members"] == ["alice"]
    ack = await b.call("join", {"room": "duel"})
    assert ack == {"ok": True, "room": "duel", "seq": 0, "members": ["alice", "bob"]}
    [joined] = await a.wait_for("player_joined")
    assert joined == {"room": "duel", "user": "bob"}
    assert "player_joined" not in b.events  # the joiner learns from its ack

    seqs = []
    for i in range(10):
        sender = a if i % 2 == 0 else b
        seqs.append((await sender.call("move", {"room": "duel", "action": {"i": i}}))["seq"])
    assert seqs == list(range(1, 11))
    for p in (a, b):
        moves = await p.wait_for("move", 10)
        assert [m["seq"] for m in moves] == list(range(1, 11))
        assert [m["action"]["i"] for m in moves] == list(range(10))
        assert [m["user"] for m in moves] == ["alice", "bob"] * 5
        assert all(m["room"] == "duel" and isinstance(m["ts"], int) for m in moves)


async def test_moves_are_not_sent_to_other_rooms(gateway, players):
    a = await players(gateway.url, gateway.token("alice"))
    b = await players(gateway.url, gateway.token("bob"))
    await a.call("join", {"room": "one"})
    await b.call("join", {"room": "two"})
    await a.call("move", {"room": "one", "action": {}})
    await b.call("move", {"room": "two", "action": {}})
    [ma] = await a.wait_for("move")
    [mb] = await b.wait_for("move")
    assert (ma["room"], ma["seq"]) == ("one", 1) and (mb["room"], mb["seq"]) == ("two", 1)
    # each one's next move comes after anything stray from the other room would have
    await a.call("move", {"room": "one", "action": {}})
    await b.call("move", {"room": "two", "action": {}})
    await a.wait_for("move", 2)
    await b.wait_for("move", 2)
    assert [(m["room"], m["seq"]) for m in a.events["move"]] == [("one", 1), ("one", 2)]
    assert [(m["room"], m["seq"]) for m in b.events["move"]] == [("two", 1), ("two", 2)]


async def test_leave_and_player_left(gateway, players):
    a = await players(gateway.url, gateway.token("alice"))
    b = await players(gateway.url, gateway.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    assert await b.call("leave", {"room": "r"}) == {"ok": True}
    [left] = await a.wait_for("player_left")
    assert left == {"room": "r", "user": "bob", "reason": "left"}
    assert (await b.call("move", {"room": "r", "action": {}}))["error"]["code"] == "not_in_room"
    assert (await b.call("leave", {"room": "r"}))["error"]["code"] == "not_in_room"
    assert (await a.call("join", {"room": "r"}))["members"] == ["alice"]  # joining twice is harmless


async def test_disconnect_tells_the_room(gateway_factory, players):
    gateway = await gateway_factory(grace_s=0)  # no grace: any disconnect is final at once
    a = await players(gateway.url, gateway.token("alice"))
    b = await players(gateway.url, gateway.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    await b.disconnect()
    [left] = await a.wait_for("player_left")
    assert left == {"room": "r", "user": "bob", "reason": "left"}  # a disconnect on purpose is a leave
    registry = gateway.app[PARTS].registry
    assert [c.user_id for c in await registry.list()] == ["alice"]


async def test_sync_returns_the_moves_after_a_seq(gateway, players):
    p = await players(gateway.url, gateway.token("alice"))
    await p.call("join", {"room": "r"})
    for i in range(5):
        await p.call("move", {"room": "r", "action": {"i": i}})
    ack = await p.call("sync", {"room": "r", "after_seq": 2})
    assert ack["ok"] is True and ack["complete"] is True
    assert [e["seq"] for e in ack["events"]] == [3, 4, 5]
    assert [e["action"] for e in ack["events"]] == [{"i": 2}, {"i": 3}, {"i": 4}]
    assert (await p.call("sync", {"room": "r", "after_seq": 5}))["events"] == []


async def test_sync_says_incomplete_when_the_log_is_short(gateway_factory, players):
    gw = await gateway_factory(move_log_size=3)
    p = await players(gw.url, gw.token("alice"))
    await p.call("join", {"room": "r"})
    for i in range(6):
        await p.call("move", {"room": "r", "action": {"i": i}})
    ack = await p.call("sync", {"room": "r", "after_seq": 0})
    assert ack["complete"] is False
    assert [e["seq"] for e in ack["events"]] == [4, 5, 6]
    assert (await p.call("sync", {"room": "r", "after_seq": 3}))["complete"] is True


async def test_state_of_relay_room(gateway, players):
    a = await players(gateway.url, gateway.token("alice"))
    b = await players(gateway.url, gateway.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    await a.call("move", {"room": "r", "action": {"x": 1}})
    for p in (a, b):
        assert await p.call("state", {"room": "r"}) == {
            "ok": True, "seq": 1, "state": {"players": ["alice", "bob"]}}


async def test_arena_enforces_its_rules(gateway_factory, players):
    gw = await gateway_factory(game="arena", arena_width=2, arena_height=1)
    a = await players(gw.url, gw.token("alice"))
    b = await players(gw.url, gw.token("bob"))
    c = await players(gw.url, gw.token("carol"))
    await a.call("join", {"room": "g"})
    await b.call("join", {"room": "g"})
    assert (await c.call("join", {"room": "g"}))["error"]["code"] == "room_full"
    state = await a.call("state", {"room": "g"})
    assert state["state"]["players"] == {"alice": [0, 0], "bob": [1, 0]}
    for action in ({"dir": "right"}, {"dir": "up"}, {"dir": "left"}, {"dir": "north"}, {"x": 1}):
        ack = await a.call("move", {"room": "g", "action": action})
        assert ack["error"]["code"] == "invalid_action", action
    await b.call("leave", {"room": "g"})
    ack = await a.call("move", {"room": "g", "action": {"dir": "right"}})
    assert ack == {"ok": True, "seq": 1}
    [move] = await a.wait_for("move")
    assert move["action"] == {"dir": "right", "pos": [1, 0]}


@pytest.mark.parametrize(("event", "payload", "code"), [
    ("join", None, "bad_request"),
    ("join", "lobby", "bad_request"),
    ("join", {}, "bad_request"),
    ("join", {"room": ""}, "bad_request"),
    ("join", {"room": "x" * 65}, "bad_request"),
    ("join", {"room": 7}, "bad_request"),
    ("move", {"room": "r"}, "bad_request"),
    ("move", {"room": "r", "action": [1, 2]}, "bad_request"),
    ("move", {"room": "r", "action": "up"}, "bad_request"),
    ("move", {"room": "nowhere", "action": {}}, "not_in_room"),
    ("move", {"room": "r", "action": {"blob": "x" * 5000}}, "payload_too_large"),
    ("sync", {"room": "r", "after_seq": -1}, "bad_request"),
    ("sync", {"room": "r", "after_seq": "3"}, "bad_request"),
    ("sync", {"room": "nowhere", "after_seq": 0}, "not_in_room"),
    ("state", {"room": "nowhere"}, "not_in_room"),
    ("refresh", {"token": "nope"}, "bad_request"),
    ("dance", {"room": "r"}, "bad_request"),
])
async def test_bad_payloads_get_error_acks(gateway, players, event, payload, code):
    p = await players(gateway.url, gateway.token("alice"))
    await p.call("join", {"room": "r"})
    ack = await p.call(event, payload)
    assert ack["ok"] is False
    assert ack["error"]["code"] == code
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    # the connection survives and still plays
    assert (await p.call("move", {"room": "r", "action": {"still": "here"}}))["ok"] is True


async def test_refresh_extends_and_refuses_another_user(gateway, players):
    p = await players(gateway.url, gateway.token("alice", ttl_s=60))
    ack = await p.call("refresh", {"token": gateway.token("alice", ttl_s=7200)})
    assert ack["ok"] is True and ack["exp"] > time.time() + 7000
    ack = await p.call("refresh", {"token": gateway.token("mallory")})
    assert ack["error"]["code"] == "forbidden"


async def test_metrics_count_events_and_acks(gateway, players):
    import aiohttp

    p = await players(gateway.url, gateway.token("alice"))
    await p.call("join", {"room": "r"})
    await p.call("move", {"room": "r", "action": {}})
    await p.call("move", {"room": "elsewhere", "action": {}})
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as resp:
            text = await resp.text()
        async with http.get(gateway.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(gateway.url + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ready"
    assert "gamegw_connections 1.0" in text
    assert 'gamegw_events_total{event="move"} 2.0' in text
    assert 'gamegw_acks_total{event="move",result="ok"} 1.0' in text
    assert 'gamegw_acks_total{event="move",result="not_in_room"} 1.0' in text
    assert 'gamegw_handler_seconds_count{event="join"} 1.0' in text
    assert "gamegw_deliveries_total 1.0" in text
