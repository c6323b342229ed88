"""Revocation: a user's tokens issued before now, or one jti, cluster-wide and across restarts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest
import redis as redis_sync

from gamegw.server.auth.tokens import mint
from tests.conftest import make_settings, refusal, start_gateway


async def revoke(gw, body):
    token = gw.token("ops", role="admin")
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/admin/revoke", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            return await resp.json()


async def admin(url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/admin/revoke", json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


async def test_revoke_closes_connections_everywhere_and_refuses_old_tokens(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    old = a_gw.token("bob")
    bob = await players(b_gw.url, old)
    outcome = await revoke(a_gw, {"user": "bob"})
    assert outcome["count"] == 1 and outcome["instances"] == {"inst-2": 1} and outcome["confirmed"]
    [reason] = await bob.wait_for("disconnect_reason")
    assert reason["code"] == 4500 and reason["reconnect"] is False
    for gw in (a_gw, b_gw):
        err = await refusal(gw.url, auth={"token": old})
        assert err["message"] == "token_invalid" and err["data"]["code"] == 4500
    fresh = await players(a_gw.url, a_gw.token("bob"))  # minted after the revoke returned
    assert (await fresh.wait_for("session"))[0]["user"] == "bob"


@pytest.mark.parametrize("instances", [1, 2])
async def test_a_token_minted_after_the_revoke_returned_is_accepted_at_once(gateway_factory, cluster_factory,
                                                                            players, instances: int) -> None:
    gws = await cluster_factory(2) if instances == 2 else [await gateway_factory()]
    await asyncio.sleep(1.02 - time.time() % 1)  # a second has just begun: the revoke and the mints share it
    before = gws[0].token("erin")  # iat: this second
    await revoke(gws[0], {"user": "erin"})
    after = gws[0].token("erin")
    for gw in gws:
        assert (await refusal(gw.url, auth={"token": before}))["message"] == "token_invalid"
    p = await players(gws[-1].url, after)
    assert (await p.wait_for("session"))[0]["user"] == "erin"


class LateClock:
    """Wall-clock time that runs 10% slow from its start: after a sleep, the clock has not got as
    far as the sleep was meant to take it, as when the event loop's timer fires early (uvloop's
    count whole milliseconds and round, which let a token minted right after the revoke
    returned fall in the cut-off's second)."""

    def __init__(self) -> None:
        self.wall, self.mono = time.time(), time.monotonic()

    def __call__(self) -> float:
        return self.wall + (time.monotonic() - self.mono) * 0.9


@pytest.mark.parametrize("state", ["memory", "redis"])
async def test_a_revoke_returns_only_once_the_clock_is_past_the_cut_offs_second(redis_server, redis_prefix,
                                                                               players, state: str) -> None:
    clock = LateClock()
    cluster = {"redis_url": redis_server.url, "redis_prefix": redis_prefix} if state == "redis" else {}
    gw = await start_gateway(make_settings(**cluster), clock=clock)
    try:
        await asyncio.sleep((1.05 - clock() % 1) / 0.9)  # a second of the clock has just begun
        before = mint(gw.settings, "erin", now=clock())
        await revoke(gw, {"user": "erin"})
        returned = clock()
        after = mint(gw.settings, "erin", now=returned)
        assert jwt.decode(after, options={"verify_signature": False})["iat"] == int(returned)
        assert (await refusal(gw.url, auth={"token": before}))["message"] == "token_invalid"
        p = await players(gw.url, after)
        assert (await p.wait_for("session"))[0]["user"] == "erin"
    finally:
        await gw.aclose()


async def test_revoke_one_jti_and_survive_a_restart(cluster_factory, players):
    [gw] = await cluster_factory(1)
    keep, drop = gw.token("carol"), gw.token("carol")
    jti = jwt.decode(drop, options={"verify_signature": False})["jti"]
    assert (await revoke(gw, {"user": "carol", "jti": jti}))["count"] == 0
    err = await refusal(gw.url, auth={"token": drop})
    assert err["message"] == "token_invalid"
    [restarted] = await cluster_factory(1)  # a new instance on the same Redis still refuses it
    err = await refusal(restarted.url, auth={"token": drop})
    assert err["message"] == "token_invalid"
    p = await players(restarted.url, keep)
    assert (await p.wait_for("session"))[0]["user"] == "carol"


async def test_revoke_on_a_single_instance(gateway, players):
    old = gateway.token("dave")
    p = await players(gateway.url, old)
    assert (await revoke(gateway, {"user": "dave"}))["count"] == 1
    [reason] = await p.wait_for("disconnect_reason")
    assert reason["code"] == 4500
    assert (await refusal(gateway.url, auth={"token": old}))["message"] == "token_invalid"


async def test_processes_keep_a_revoked_token_refused_until_its_exp(process_factory, players, redis_server,
                                                                     redis_prefix) -> None:
    """The audit's case, with real processes: jwt_max_lifetime_s = 5 and a token an hour long."""
    a = await process_factory("inst-a", GAMEGW_JWT_MAX_LIFETIME_S="5")
    settings = make_settings()
    hour = mint(settings, "alice", ttl_s=3600)
    err = await refusal(a.url, auth={"token": hour})  # it would outlive any revocation: refused outright
    assert err == {"message": "token_invalid", "data": {"code": 4500, "reason": "invalid token"}}
    status, body = await admin(a.url, mint(settings, "root", role="admin", ttl_s=3600), {"user": "alice"})
    assert (status, body) == (401, {"error": {"code": "token_invalid",
                                              "message": "the token lives longer than jwt_max_lifetime_s (5 s)"}})

    # by jti, with the token's exp: kept until then, also for an instance that allows longer tokens
    carol = mint(settings, "carol", ttl_s=3600)
    claims = jwt.decode(carol, options={"verify_signature": False})
    status, _ = await admin(a.url, mint(settings, "root", role="admin", ttl_s=5),
                            {"user": "carol", "jti": claims["jti"], "exp": claims["exp"]})
    assert status == 200
    # kept until the token's exp, not for jwt_max_lifetime_s (Redis's clock cannot be advanced:
    # the record's own expiry time says when Redis will drop it)
    r = redis_sync.Redis.from_url(redis_server.url)
    try:
        drop_at_ms = r.pexpiretime(f"{redis_prefix}:revoked-jti:{claims['jti']}")
    finally:
        r.close()
    assert claims["exp"] * 1000 <= drop_at_ms < claims["exp"] * 1000 + 1000, (drop_at_ms, claims["exp"])
    b = await process_factory("inst-b", GAMEGW_JWT_MAX_LIFETIME_S="7200")
    dave = await players(b.url, mint(settings, "dave", ttl_s=3600))  # b takes hour-long tokens
    assert (await dave.wait_for("session"))[0]["user"] == "dave"
    for gw in (b, a):
        err = await refusal(gw.url, auth={"token": carol})
        assert err["message"] == "token_invalid" and err["data"]["code"] == 4500, gw.instance_id
    status, body = await admin(b.url, mint(settings, "carol", role="admin", ttl_s=3600), {"user": "x"})
    assert status == 200  # what b refuses carol's token for is the revocation, not its length
    assert (await refusal(a.url, auth={"token": hour}))["message"] == "token_invalid"
