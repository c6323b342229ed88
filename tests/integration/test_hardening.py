"""Issue 12's findings that live in the seat, budget and room paths, each as the attack.

(The seat race itself, with real processes, is in test_seat_race.py; the store-level rule in
test_session_store.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from gamegw.server.app import PARTS
from gamegw.server.auth.tokens import mint
from gamegw.server.state.keys import Keys
from tests.conftest import eventually, make_settings, refusal
from tests.rawclient import RawWebSocket


async def burst(ws: RawWebSocket, room: str, n: int, first_id: int) -> int:
    """Send ``n`` moves without waiting, then count the ok acks."""
    for i in range(n):
        ws.send_text(f"42/game,{first_id + i}" + json.dumps(["move", {"room": room, "action": {"i": i}}]))
    ok = 0
    for _ in range(n):
        while True:
            text = await ws.recv_text()
            if text.startswith("43/game,"):
                ok += bool(json.loads(text[text.index("["):])[0]["ok"])
                break
    return ok


async def test_reconnecting_does_not_reset_the_event_budget(process_factory):
    """Finding 4: one connection was capped, but a new connection per burst (resuming the same
    session, alternating instances) had every burst accepted. The budget is the user's now: over
    the whole run no more moves are accepted than one burst, the refill over the elapsed time,
    and at most one more burst for the second instance (see limits.UserBudgets)."""
    rate, burst_size, cycles = 5, 10, 10
    env = {"GAMEGW_MAX_EVENTS_PER_S": str(rate), "GAMEGW_MAX_EVENTS_BURST": str(burst_size),
           "GAMEGW_ABUSE_MAX_RATE_LIMITED": "0", "GAMEGW_GRACE_S": "30"}
    gws = [await process_factory("gw-a", **env), await process_factory("gw-b", **env)]
    token = mint(make_settings(), "mallory")
    accepted = 0
    started = time.monotonic()
    for k in range(cycles):
        ws = await RawWebSocket.connect(gws[k % 2].url)
        session = await ws.join_game(token)
        assert session["resumed"] is (k > 0)
        if k == 0:
            assert (await ws.call("join", {"room": "r"}, 1))["ok"]
        accepted += await burst(ws, "r", 3 * burst_size, 100)
        ws.close()  # a drop: the next connection resumes the session
        await asyncio.sleep(0.3)
    elapsed = time.monotonic() - started
    assert accepted <= burst_size + rate * elapsed + burst_size, (accepted, elapsed)
    assert accepted >= burst_size  # the first burst went through


async def test_unknown_events_count_against_the_budget(gateway_factory):
    """Finding 4, second half: 400 events of an unknown name earned no 4029."""
    gw = await gateway_factory(max_events_per_s=5, max_events_burst=10, abuse_max_rate_limited=20,
                               abuse_window_s=10)
    ws = await RawWebSocket.connect(gw.url)
    await ws.join_game(gw.token("mallory"))
    for i in range(60):
        ws.send_text(f"42/game,{i}" + json.dumps(["no_such_event", {}]))
    texts = await ws.until("41/game")  # the namespace disconnect that follows disconnect_reason
    codes = [json.loads(t[t.index("["):])[0]["error"]["code"] for t in texts if t.startswith("43/game,")]
    assert codes[:10] == ["bad_request"] * 10
    assert set(codes[10:]) == {"rate_limited"}
    reasons = [json.loads(t[len("42/game,"):]) for t in texts if t.startswith('42/game,["disconnect_reason"')]
    assert reasons == [["disconnect_reason", {"code": 4029, "reason": "rate_limited", "reconnect": True,
                                               "message": "too many events for too long"}]]
    ws.close()


async def test_rooms_per_connection_are_limited_and_a_join_costs_the_same(cluster_factory, players,
                                                                         redis_server, redis_prefix):
    """Finding 8: 5000 rooms on one connection made ~19k keys and every join rewrote the whole
    session and connection JSON. Now the rooms are limited (``room_limit``) and a join writes
    one member of a set and one field of a hash, whatever the number of rooms."""
    [gw] = await cluster_factory(1, max_rooms_per_connection=20)
    p = await players(gw.url, gw.token("alice"))
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(redis_prefix)
    sid = (await p.wait_for("session"))[0]["sid"]
    session_id = (await p.wait_for("session"))[0]["session_id"]
    sizes = []
    try:
        for i in range(20):
            assert (await p.call("join", {"room": f"r{i}"}))["ok"]
            sizes.append((await redis.strlen(keys.conn(sid)), await redis.hlen(keys.session(session_id))))
        ack = await p.call("join", {"room": "one-too-many"})
        assert ack == {"ok": False, "error": {"code": "room_limit",
                                              "message": "a connection may be in 20 rooms at most"}}
        assert set(sizes) == {sizes[0]}  # the connection's and the session's records do not grow
        assert await redis.scard(keys.conn(sid) + ":rooms") == 20
        assert await redis.hlen(keys.session(session_id) + ":rooms") == 20
        assert (await p.call("leave", {"room": "r0"}))["ok"]
        assert (await p.call("join", {"room": "one-too-many"}))["ok"]
    finally:
        await redis.aclose()
    text = gw.app[PARTS].metrics.render().decode()
    assert 'gamegw_limit_hits_total{limit="rooms"} 1.0' in text


@pytest.mark.parametrize("mode", ["memory", "redis"])
async def test_a_transport_closed_while_connecting_is_a_drop(mode, gateway_factory, cluster_factory):
    """A transport that closed while its connect handler ran (here: the heartbeat gave up on a
    client that vanished while the state store was slow) was never seen to disconnect:
    python-socketio skips the disconnect handler of a connection not yet connected, so the
    connection, its seat and its registry entry stayed for good. Now it is a drop."""
    fast = {"ping_interval_s": 0.2, "ping_timeout_s": 0.2}
    gw = await gateway_factory(**fast) if mode == "memory" else (await cluster_factory(1, **fast))[0]
    parts = gw.app[PARTS]
    revocations = parts.gateway.revocations
    checked = asyncio.Event()

    async def slow_is_revoked(claims: Any) -> bool:  # a slow state store
        checked.set()
        await asyncio.sleep(1.5)
        return bool(await type(revocations).is_revoked(revocations, claims))

    revocations.is_revoked = slow_is_revoked  # type: ignore[method-assign]
    ws = await RawWebSocket.connect(gw.url)
    assert (await ws.recv_text()).startswith("0")
    ws.send_text("40/game," + json.dumps({"token": gw.token("alice")}))
    await asyncio.wait_for(checked.wait(), 5)
    ws.close()  # gone while the connect handler waits

    async def settled() -> bool:
        sessions = await parts.gateway.sessions.of_user("alice")
        return not parts.gateway.conns and [s.state for s in sessions] == ["grace"]

    await eventually(settled, timeout=5)
    assert [c.state for c in await parts.registry.list()] == ["grace"]
    assert 'gamegw_connections 0.0' in parts.metrics.render().decode()


async def test_the_sweep_unseats_members_whose_session_is_gone(cluster_factory, players, redis_server,
                                                               redis_prefix):
    """A crash between a session's end and its rooms' unseating left a ghost member in the
    room for good. The sweep removes it, and the room hears ``player_left`` (timeout)."""
    [gw] = await cluster_factory(1)
    alice = await RawWebSocket.connect(gw.url)
    session_id = (await alice.join_game(gw.token("alice")))["session_id"]
    assert (await alice.call("join", {"room": "r"}, 1))["ok"]
    bob = await players(gw.url, gw.token("bob"))
    assert (await bob.call("join", {"room": "r"}))["ok"]
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(redis_prefix)
    try:
        assert await gw.app[PARTS].gateway.sweep_seats() == 0  # nothing to do while sessions live
        alice.send_text("41/game")  # a clean leave: player_left (left), the session goes...
        assert (await bob.wait_for("player_left"))[0]["reason"] == "left"
        alice.close()
        # ... then put back the ghost a crash would leave: a seat whose session no longer exists
        await redis.hset(keys.room("r", "seats"), session_id, "alice")
        await redis.hincrby(keys.room("r", "users"), "alice", 1)
        assert sorted(await redis.hkeys(keys.room("r", "users"))) == ["alice", "bob"]
        assert await gw.app[PARTS].gateway.sweep_seats() == 1
        left = await bob.wait_for("player_left", 2)
        assert left[1] == {"room": "r", "user": "alice", "reason": "timeout"}
        assert await redis.hkeys(keys.room("r", "users")) == ["bob"]
        carol = await players(gw.url, gw.token("carol"))
        assert sorted((await carol.call("join", {"room": "r"}))["members"]) == ["bob", "carol"]
    finally:
        await redis.aclose()


async def test_a_connect_while_redis_is_down_is_refused_with_unavailable(tmp_path, players):
    """The contract's 4001: the connect used to get no answer at all (the first Redis call in
    the connect handler failed through python-socketio, with a traceback)."""
    from tests.conftest import RedisServer, start_gateway

    server = RedisServer(tmp_path)
    server.start()
    settings = make_settings(redis_url=server.url, redis_timeout_s=0.5, heartbeat_interval_s=0.2,
                             heartbeat_ttl_s=1.0)
    gw = await start_gateway(settings)
    try:
        alice = await players(gw.url, gw.token("alice"))
        assert (await alice.call("join", {"room": "r"}))["ok"]
        server.stop()
        err = await refusal(gw.url, auth={"token": gw.token("bob")})
        assert err == {"message": "unavailable", "data": {"code": 4001, "reason": "state store unreachable, retry"}}
        assert alice.client.connected  # connected players stay connected
    finally:
        await gw.aclose()
        server.stop()


@pytest.mark.parametrize("mode", ["memory", "redis"])
async def test_a_kick_ends_the_seat_of_a_player_who_just_dropped(mode, gateway_factory, cluster_factory, players):
    """A kick of a user whose session waited in grace acted on nothing: the seat stayed until
    grace ran out and the rooms heard ``timeout``. Now the session ends with ``kicked``."""
    gw = await gateway_factory() if mode == "memory" else (await cluster_factory(1))[0]
    alice = await RawWebSocket.connect(gw.url)
    await alice.join_game(gw.token("alice"))
    assert (await alice.call("join", {"room": "r"}, 1))["ok"]
    bob = await players(gw.url, gw.token("bob"))
    assert (await bob.call("join", {"room": "r"}))["ok"]
    alice.close()  # a drop: alice's seat waits in grace
    assert (await bob.wait_for("player_disconnected"))[0]["user"] == "alice"
    outcome = await gw.app[PARTS].cluster.kick("alice", "cheating")
    assert (outcome.count, outcome.ended) == (0, 1)
    assert (await bob.wait_for("player_left"))[0] == {"room": "r", "user": "alice", "reason": "kicked"}
    assert (await bob.call("state", {"room": "r"}))["state"]["players"] == ["bob"]
    assert (await gw.app[PARTS].cluster.kick("alice", "again")).ended == 0


def _moves(texts: list[str]) -> list[int]:
    return [json.loads(t[len("42/game,"):])[1]["seq"] for t in texts if t.startswith('42/game,["move"')]


async def test_a_joiner_never_gets_the_moves_its_join_already_counts(cluster_factory):
    """Found by a 1000-player soak: a player joining a busy room got, before its ack, moves
    with a seq at or below the ack's (40-67 repeats per ramp). The join routes the room to the
    instance before the join script fixes the seq, so such moves reach the instance: they are
    held now, and only the ones after the join's seq go out. A second instance moves in the
    room all along; the joiner joins and leaves 30 times."""
    gws = await cluster_factory(2, max_events_per_s=0)
    mover = await RawWebSocket.connect(gws[0].url)
    await mover.join_game(gws[0].token("mover"))
    assert (await mover.call("join", {"room": "r"}, 0))["ok"]
    stop = asyncio.Event()

    async def keep_moving() -> None:
        ack_id = 1
        while not stop.is_set():
            for i in range(10):
                mover.send_text(f"42/game,{ack_id + i}" + json.dumps(["move", {"room": "r", "action": {}}]))
            await mover.until(f"43/game,{ack_id + 9}")
            ack_id += 10

    moving = asyncio.create_task(keep_moving())
    joiner = await RawWebSocket.connect(gws[1].url)
    await joiner.join_game(gws[1].token("joiner"))
    try:
        for k in range(30):
            joiner.send_text(f"42/game,{2 * k}" + json.dumps(["join", {"room": "r"}]))
            texts = await joiner.until(f"43/game,{2 * k}")
            ack = json.loads(texts[-1][len(f"43/game,{2 * k}"):])[0]
            assert ack["ok"], ack
            texts += await joiner.until('42/game,["move"')  # at least one live move after the ack
            seqs = _moves(texts)
            assert seqs and seqs[0] == ack["seq"] + 1, (k, ack["seq"], seqs)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (k, seqs)
            joiner.send_text(f"42/game,{2 * k + 1}" + json.dumps(["leave", {"room": "r"}]))
            await joiner.until(f"43/game,{2 * k + 1}")
    finally:
        stop.set()
        await moving
        mover.close()
        joiner.close()


async def test_a_resume_closed_during_its_replay_still_says_why(gateway_factory):
    """Found by the seat race test (1 round in 20): a connection replaced while its resume was
    still replaying got ``41`` and a close, but no ``disconnect_reason``: the reason, addressed to
    it alone, was held with the room's moves until the replay ended, and the close came first.
    Here the replay's log read is slowed down and the user is kicked meanwhile."""
    gw = await gateway_factory(grace_s=30)
    token = gw.token("alice")
    ws = await RawWebSocket.connect(gw.url)
    await ws.join_game(token)
    assert (await ws.call("join", {"room": "r"}, 0))["ok"]
    assert (await ws.call("move", {"room": "r", "action": {}}, 1))["ok"]
    ws.close()  # a drop
    gateway = gw.app[PARTS].gateway
    await eventually(lambda: _async(not gateway.conns))
    events_after = gateway.rooms.events_after

    async def slow_events_after(room: str, after: int) -> Any:
        await asyncio.sleep(0.3)
        return await events_after(room, after)

    gateway.rooms.events_after = slow_events_after  # type: ignore[method-assign]
    again = await RawWebSocket.connect(gw.url)
    session = await again.join_game(token, last_seq={"r": 0})
    assert session["resumed"]
    assert await gateway.kick_local("alice", "bye") == 1
    texts, code = await again.closed_with()
    again.close()
    reasons = [json.loads(t[len("42/game,"):])[1] for t in texts if t.startswith('42/game,["disconnect_reason"')]
    assert reasons == [{"code": 4503, "reason": "kicked", "reconnect": False, "message": "bye"}], texts
    assert code == 1000


async def _async(value: bool) -> bool:
    return value
