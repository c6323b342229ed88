"""A live connection lives as long as its token: `token_expiring`, `refresh`, then 4005."""

from __future__ import annotations

import jwt

from gamegw.server.app import PARTS


async def test_token_expiring_then_closed_with_4005_and_resumable(gateway_factory, players):
    gw = await gateway_factory(token_expiring_s=1.0)
    token = gw.token("alice", ttl_s=2)
    p = await players(gw.url, token)
    await p.call("join", {"room": "r"})
    [warning] = await p.wait_for("token_expiring", timeout=5)
    assert warning["exp"] == jwt.decode(token, options={"verify_signature": False})["exp"]
    [reason] = await p.wait_for("disconnect_reason", timeout=5)
    assert reason == {"code": 4005, "reason": "token_expired", "reconnect": True}
    # 4005 is a drop: with a fresh token the same user resumes the session and its rooms
    [entry] = await gw.app[PARTS].registry.list(user_id="alice")
    assert entry.state == "grace"
    back = await players(gw.url, gw.token("alice", ttl_s=3600))
    [session] = await back.wait_for("session")
    assert session["resumed"] is True and session["rooms"] == ["r"]


async def test_refresh_moves_the_deadline(gateway_factory, players):
    """When the timers fire is tests/unit/test_token_clock.py's; here, that a refresh re-arms them."""
    gw = await gateway_factory(token_expiring_s=1.0)
    first = gw.token("alice", ttl_s=2)
    p = await players(gw.url, first)
    await p.wait_for("token_expiring", timeout=5)
    expiry = gw.app[PARTS].gateway.expiry
    [sid] = gw.app[PARTS].gateway.conns
    assert expiry.armed_for(sid) == jwt.decode(first, options={"verify_signature": False})["exp"]
    fresh = gw.token("alice", ttl_s=3600)
    ack = await p.call("refresh", {"token": fresh})
    assert ack["ok"] is True
    assert expiry.armed_for(sid) == jwt.decode(fresh, options={"verify_signature": False})["exp"]
    assert p.client.connected and "disconnect_reason" not in p.events
    assert (await p.call("join", {"room": "r"}))["ok"] is True


async def test_refresh_for_another_user_is_refused_and_closes(gateway, players):
    p = await players(gateway.url, gateway.token("alice"))
    ack = await p.call("refresh", {"token": gateway.token("mallory")})
    assert ack["error"]["code"] == "forbidden"
    [reason] = await p.wait_for("disconnect_reason")
    assert reason["code"] == 4500 and reason["reconnect"] is False
