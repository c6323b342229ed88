"""Revocation: a user's tokens issued before now, or one jti, cluster-wide and across restarts."""

from __future__ import annotations

import asyncio

import aiohttp
import jwt

from tests.conftest import refusal


async def revoke(gw, body):
    token = gw.token("ops", role="admin")
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/admin/revoke", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            return await resp.json()


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
    await asyncio.sleep(1.1)  # a token issued after the revocation (iat has one-second resolution)
    fresh = await players(a_gw.url, a_gw.token("bob"))
    assert (await fresh.wait_for("session"))[0]["user"] == "bob"


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
