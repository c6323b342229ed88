"""The operator surface's own security: revoked admin tokens are refused on every instance,
/admin/* and /metrics may have a listener of their own, off the players' port, a public
/readyz tells nothing internal, and a production profile without an audience is warned about."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from gamegw.server.app import PARTS
from gamegw.server.auth.tokens import mint
from tests.cli.run import GAMECTL, gamectl
from tests.conftest import RedisServer, free_port, make_settings, process_env

REVOKED = {"error": {"code": "token_invalid", "message": "token revoked"}}


async def call(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None
               ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, json=body,
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


async def refused_everywhere(url: str, token: str) -> None:
    """list, kick, revoke and publish through ``url`` with ``token``: each one 401 token revoked."""
    for method, path, body in (("GET", "/admin/connections", None), ("GET", "/admin/instances", None),
                               ("POST", "/admin/kick", {"user": "bob"}),
                               ("POST", "/admin/revoke", {"user": "root"}),
                               ("POST", "/admin/publish", {"room": "lobby", "action": {}})):
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


async def test_during_a_redis_outage_admin_is_unavailable_and_readyz_names_no_address(cluster_factory, own_redis,
                                                                                     caplog) -> None:
    [gw] = await cluster_factory(1, redis_url=own_redis.url, redis_timeout_s=0.5)
    ops = gw.token("ops", role="admin")
    assert (await call(gw.url, ops, "GET", "/admin/connections"))[0] == 200
    own_redis.stop()
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/readyz") as resp:
        status, text = resp.status, await resp.text()
    # ready or not, and why as a code: no address, port or exception text for whoever asks
    assert (status, json.loads(text)) == (503, {"status": "unavailable", "instance": "inst-1",
                                                "reason": "store_unreachable"})
    assert str(own_redis.port) not in text and "127.0.0.1" not in text and "redis" not in text.lower()
    [line] = [r for r in caplog.records if r.getMessage() == "not_ready"]
    assert line.gamegw_fields["reason"] == "store_unreachable"
    assert str(own_redis.port) in line.gamegw_fields["error"]  # the details are kept for the operator
    unavailable = {"error": {"code": "unavailable", "message": "the state store did not answer; retry"}}
    assert await call(gw.url, ops, "GET", "/admin/connections") == (503, unavailable)
    assert await call(gw.url, ops, "POST", "/admin/kick", {"user": "bob"}) == (503, unavailable)
    [line] = [r for r in caplog.records if r.getMessage() == "admin_unavailable"][:1]
    assert line.gamegw_fields["path"] == "/admin/connections"


# -- the admin listener ------------------------------------------------------------------------

OPS_PATHS = [("GET", "/admin/connections", None), ("GET", "/admin/instances", None),
             ("POST", "/admin/kick", {"user": "nobody"}), ("GET", "/metrics", None)]


async def status_of(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, json=body,
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
            return resp.status


async def assert_split(game_url: str, admin_url: str, token: str) -> None:
    """/admin/* and /metrics: 404 on the game listener, served on the admin one; health on both."""
    for method, path, body in OPS_PATHS:
        assert await status_of(game_url, token, method, path, body) == 404, path
        assert await status_of(admin_url, token, method, path, body) == 200, path
    for url in (game_url, admin_url):
        for path in ("/healthz", "/readyz"):
            assert await status_of(url, token, "GET", path) == 200, url + path


async def test_an_admin_listener_takes_admin_and_metrics_off_the_game_port(gateway_factory, players) -> None:
    gw = await gateway_factory(admin_port=0)
    admin_url = gw.app[PARTS].admin_url
    assert admin_url.startswith("http://127.0.0.1:") and admin_url != gw.url
    alice = await players(gw.url, gw.token("alice"))
    assert (await alice.call("join", {"room": "r"}))["ok"] is True  # the game listener plays as before
    ops = gw.token("ops", role="admin")
    await assert_split(gw.url, admin_url, ops)
    status, body = await call(admin_url, ops, "GET", "/admin/connections")
    assert status == 200 and [c["user_id"] for c in body["connections"]] == ["alice"]
    async with aiohttp.ClientSession() as http, http.get(admin_url + "/metrics") as resp:
        assert "gamegw_connections 1.0" in await resp.text()


async def test_without_an_admin_listener_everything_stays_on_the_game_port(gateway_factory) -> None:
    gw = await gateway_factory()
    assert gw.app[PARTS].admin_url == ""
    ops = gw.token("ops", role="admin")
    for method, path, body in OPS_PATHS:
        assert await status_of(gw.url, ops, method, path, body) == 200, path


async def test_gamectl_serve_with_an_admin_port(process_factory, players) -> None:
    """A `gamectl serve` process with GAMEGW_ADMIN_PORT, and gamectl's default URL following it."""
    admin_port = free_port()
    a = await process_factory("inst-a", GAMEGW_ADMIN_PORT=str(admin_port))
    admin_url = f"http://127.0.0.1:{admin_port}"
    settings = make_settings()
    bob = await players(a.url, mint(settings, "bob"))
    await assert_split(a.url, admin_url, mint(settings, "ops", role="admin"))

    config = {"GAMEGW_PORT": str(a.port), "GAMEGW_ADMIN_PORT": str(admin_port)}
    code, out, err = await gamectl("connections", "ls", "--json", **config)  # no --url: the admin listener
    assert code == 0, err
    assert [(c["user_id"], c["instance_id"]) for c in json.loads(out)["connections"]] == [("bob", "inst-a")]
    code, _, err = await gamectl("kick", "bob", GAMEGW_PORT=str(a.port))  # the game port has no admin API
    assert code == 1 and "HTTP 404" in err
    code, out, err = await gamectl("kick", "bob", "--json", **config)
    assert code == 0 and json.loads(out)["count"] == 1, err
    [reason] = await bob.wait_for("disconnect_reason")
    assert reason["code"] == 4503


async def test_an_admin_port_that_is_taken_stops_startup_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = process_env("inst-a", GAMEGW_ADMIN_PORT=str(port))
        proc = await asyncio.create_subprocess_exec(GAMECTL, "serve", "--port", str(free_port()), env=env,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err.decode()
    assert lines[-2] == f"error: port {port} on 127.0.0.1 is in use" and lines[-1].startswith("hint: "), lines


# -- the audience warning ----------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "warned"), [({}, True), ({"jwt_audience": "gamegw"}, False),
                                                   ({"profile": "dev"}, False)], ids=["prod", "audience", "dev"])
async def test_a_production_profile_without_an_audience_warns_once(gateway_factory, caplog, overrides,
                                                                   warned: bool) -> None:
    caplog.set_level(logging.INFO, logger="gamegw")
    await gateway_factory(**overrides)
    lines = [r for r in caplog.records if r.getMessage() == "no_audience"]
    assert [(r.levelno, r.name) for r in lines] == ([(logging.WARNING, "gamegw.app")] if warned else [])
    assert [r.getMessage() for r in caplog.records if r.getMessage() == "start"] == ["start"]
