"""The admin API's own security: revoked admin tokens are refused on every instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from server.auth import mint
from tests.conftest import RedisServer, make_settings

REVOKED = {"error": {"code": "token_invalid", "message": "token revoked"}}


async def call(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None
               ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, json=body,
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


async def refused_everywhere(url: str, token: str) -> None:
    """list, kick and revoke through ``url`` with ``token``: each one 401 token revoked."""
    for method, path, body in (("GET", "/admin/connections", None), ("GET", "/admin/instances", None),
                               ("POST", "/admin/kick", {"user": "bob"}),
                               ("POST", "/admin/revoke", {"user": "root"})):
        assert await call(url, token, method, path, body) == (401, REVOKED), path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("by", ["user", "jti"])
async def test_a_revoked_admin_token_is_refused_on_every_instance(cluster_factory, players, by: str) -> None:
    a_gw, b_gw = await cluster_factory(2)
    bob = await players(b_gw.url, b_gw.token("bob"))
    root = a_gw.token("root", role="admin")
    ops = a_gw.token("ops", role="admin")
    ops_twin = a_gw.token("ops", role="admin")  # the same user's other token: only a user revocation covers it
    assert (await call(b_gw.url, ops, "GET", "/admin/connections"))[0] == 200
    jti = jwt.decode(ops, options={"verify_signature": False})["jti"]
    body = {"user": "ops", "jti": jti} if by == "jti" else {"user": "ops"}
    assert (await call(a_gw.url, root, "POST", "/admin/revoke", body))[0] == 200

    for gw in (b_gw, a_gw):
        await refused_everywhere(gw.url, ops)
    status, answer = await call(b_gw.url, ops_twin, "GET", "/admin/instances")
    if by == "user":
        assert (status, answer) == (401, REVOKED)
    else:
        assert status == 200 and len(answer["instances"]) == 2
    assert bob.client.connected and not bob.events["disconnect_reason"]  # the refused kick did nothing
    fresh = a_gw.token("ops", role="admin")  # minted after the revoke returned: accepted at once
    status, outcome = await call(b_gw.url, fresh, "POST", "/admin/kick", {"user": "bob"})
    assert (status, outcome["count"]) == (200, 1)


async def test_a_revoked_admin_token_is_refused_on_a_single_instance(gateway) -> None:
    root, ops = gateway.token("root", role="admin"), gateway.token("ops", role="admin")
    assert (await call(gateway.url, root, "POST", "/admin/revoke", {"user": "ops"}))[0] == 200
    await refused_everywhere(gateway.url, ops)


async def test_processes_refuse_an_admin_token_revoked_through_another(process_factory, players) -> None:
    """Two `gamectl serve` processes over one redis-server: revoke through A, refused by B."""
    a = await process_factory("inst-a")
    b = await process_factory("inst-b")
    settings = make_settings()
    bob = await players(b.url, mint(settings, "bob"))
    root, ops = mint(settings, "root", role="admin"), mint(settings, "ops", role="admin")
    one = mint(settings, "one", role="admin")
    assert (await call(b.url, ops, "GET", "/admin/connections"))[0] == 200
    assert (await call(a.url, root, "POST", "/admin/revoke", {"user": "ops"}))[0] == 200
    one_jti = jwt.decode(one, options={"verify_signature": False})["jti"]
    assert (await call(a.url, root, "POST", "/admin/revoke", {"user": "one", "jti": one_jti}))[0] == 200
    await refused_everywhere(b.url, ops)
    await refused_everywhere(b.url, one)
    assert bob.client.connected
    status, outcome = await call(b.url, mint(settings, "ops", role="admin"), "POST", "/admin/kick", {"user": "bob"})
    assert (status, outcome["count"], outcome["instances"]) == (200, 1, {"inst-b": 1})
    [reason] = await bob.wait_for("disconnect_reason")
    assert reason["code"] == 4503


async def test_admin_calls_during_a_redis_outage_answer_unavailable(cluster_factory, own_redis, caplog) -> None:
    [gw] = await cluster_factory(1, redis_url=own_redis.url, redis_timeout_s=0.5)
    ops = gw.token("ops", role="admin")
    assert (await call(gw.url, ops, "GET", "/admin/connections"))[0] == 200
    own_redis.stop()
    unavailable = {"error": {"code": "unavailable", "message": "the state store did not answer; retry"}}
    assert await call(gw.url, ops, "GET", "/admin/connections") == (503, unavailable)
    assert await call(gw.url, ops, "POST", "/admin/kick", {"user": "bob"}) == (503, unavailable)
    [line] = [r for r in caplog.records if r.getMessage() == "admin_unavailable"][:1]
    assert line.gamegw_fields["path"] == "/admin/connections"
