"""A live connection lives as long as its token: `token_expiring`, `refresh`, then 4005."""

from __future__ import annotations

import asyncio
import time

from gamegw.server.app import PARTS


async def test_token_expiring_then_closed_with_4005_and_resumable(gateway_factory, players):
    gw = await gateway_factory(token_expiring_s=1.0)
    p = await players(gw.url, gw.token("alice", ttl_s=2))
    await p.call("join", {"room": "r"})
    started = time.monotonic()
    [warning] = await p.wait_for("token_expiring", timeout=5)
    assert abs(warning["exp"] - (time.time() + 1)) < 1.5
    [reason] = await p.wait_for("disconnect_reason", timeout=5)
    assert reason == {"code": 4005, "reason": "token_expired", "reconnect": True}
    assert time.monotonic() - started < 3.5
    # 4005 is a drop: with a fresh token the same user resumes the session and its rooms
    [entry] = await gw.app[PARTS].registry.list(user_id="alice")
    assert entry.state == "grace"
    back = await players(gw.url, gw.token("alice", ttl_s=3600))
    [session] = await back.wait_for("session")
    assert session["resumed"] is True and session["rooms"] == ["r"]


async def test_refresh_moves_the_deadline(gateway_factory, players):
    gw = await gateway_factory(token_expiring_s=1.0)
    p = await players(gw.url, gw.token("alice", ttl_s=2))
    await p.wait_for("token_expiring", timeout=5)
    ack = await p.call("refresh", {"token": gw.token("alice", ttl_s=3600)})
    assert ack["ok"] is True
    await asyncio.sleep(2.0)  # past the first token's exp: nothing happens
    assert p.client.connected and "disconnect_reason" not in p.events
    assert (await p.call("join", {"room": "r"}))["ok"] is True


async def test_refresh_for_another_user_is_refused_and_closes(gateway, players):
    p = await players(gateway.url, gateway.token("alice"))
    ack = await p.call("refresh", {"token": gateway.token("mallory")})
    assert ack["error"]["code"] == "forbidden"
    [reason] = await p.wait_for("disconnect_reason")
    assert reason["code"] == 4500 and reason["reconnect"] is False
