"""The ops commands (`connections ls`, `kick`, `simulate-drop`) against a real two-instance cluster."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import time
from pathlib import Path

import pytest
import redis as redis_sync
import socketio
import typer

from gamegw.gamectl.admin import AdminClient
from gamegw.server.app import PARTS
from gamegw.server.config import load_settings
from tests.cli.run import GAMECTL, gamectl
from tests.conftest import TEST_SECRET, eventually, make_settings, refusal, start_gateway


def _disconnected(player):
    async def check():
        return not player.client.connected

    return check

async def test_connections_ls_lists_the_cluster(cluster_factory, players, redis_server, redis_prefix):
    a_gw, b_gw = await cluster_factory(2)
    await players(a_gw.url, a_gw.token("alice"))
    bob = await players(b_gw.url, b_gw.token("bob"))
    await bob.call("join", {"room": "lobby"})

    code, out, _ = await gamectl("connections", "ls", "--json", "--url", a_gw.url)
    assert code == 0
    rows = {(c["user_id"], c["instance_id"], tuple(c["rooms"])) for c in json.loads(out)["connections"]}
    assert rows == {("alice", "inst-1", ()), ("bob", "inst-2", ("lobby",))}

    code, out, _ = await gamectl("connections", "ls", "--json", "--redis", redis_server.url, "--prefix", redis_prefix)
    assert code == 0
    assert {c["user_id"] for c in json.loads(out)["connections"]} == {"alice", "bob"}

    code, out, _ = await gamectl("connections", "ls", "--room", "lobby", "--url", b_gw.url)
    assert code == 0
    assert "bob" in out and "inst-2" in out and "alice" not in out and "1 connection" in out


async def test_kick_a_user_on_another_instance(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    bob = await players(b_gw.url, b_gw.token("bob"))
    code, out, err = await gamectl("kick", "bob", "--reason", "spam", "--json", "--url", a_gw.url)
    assert code == 0, err
    assert json.loads(out) == {"user": "bob", "count": 1, "instances": {"inst-2": 1}, "unconfirmed": [],
                               "confirmed": True, "ended": 0}
    [reason] = await bob.wait_for("disconnect_reason")
    assert reason["code"] == 4503 and reason["message"] == "spam"

    code, out, err = await gamectl("kick", "nobody", "--url", a_gw.url)
    assert code == 1
    assert err.startswith("error: nobody was kicked") and "Traceback" not in err


async def test_simulate_drop_reports_the_return(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    bob = await players(b_gw.url, b_gw.token("bob"))
    task = asyncio.create_task(gamectl("simulate-drop", "bob", "--block", "3", "--wait", "12", "--json",
                                       "--url", a_gw.url))
    await eventually(_disconnected(bob))
    cut_at = time.monotonic()
    # --block is carried out: during it, the user's connects go nowhere, on either instance
    blocked = socketio.AsyncClient(reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await blocked.connect(b_gw.url, namespaces=["/game"], auth={"token": b_gw.token("bob")},
                                  transports=["websocket"], wait_timeout=2)
    finally:
        await blocked.shutdown()
    assert time.monotonic() - cut_at < 3, "the blocked connect was tried too late to tell"
    await asyncio.sleep(max(0.0, 3.1 - (time.monotonic() - cut_at)))
    await players(a_gw.url, a_gw.token("bob"))  # the player's client comes back, on the other instance
    code, out, err = await task
    assert code == 0, err
    report = json.loads(out)
    assert report["count"] == 1 and report["instances"] == {"inst-2": 1}
    assert report["came_back"] is True and report["instance"] == "inst-1"
    assert report["after_s"] >= 3
    assert report["block_s"] == 3
    assert report["resumed"] is True  # within grace: the session was taken back


async def test_errors_are_one_line_with_a_hint(cluster_factory):
    [gw] = await cluster_factory(1)
    code, _, err = await gamectl("simulate-drop", "ghost", "--url", gw.url)
    assert code == 1 and "no live connection" in err
    code, _, err = await gamectl("connections", "ls", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the gateway" in err and "hint:" in err
    code, _, err = await gamectl("connections", "ls", "--url", gw.url, "--token", "forged")
    assert code == 1 and "refused" in err
    code, _, _ = await gamectl("kick")
    assert code == 2


async def test_revoke_command(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    bob = await players(b_gw.url, b_gw.token("bob"))
    code, out, err = await gamectl("revoke", "bob", "--json", "--url", a_gw.url)
    assert code == 0, err
    assert json.loads(out)["count"] == 1
    [reason] = await bob.wait_for("disconnect_reason")
    assert reason["code"] == 4500
    code, out, _ = await gamectl("revoke", "bob", "--jti", "abc", "--url", a_gw.url)
    assert code == 0 and "token abc" in out
    # its effect, on both instances: that token is refused, another token of bob's is not
    for gw in (a_gw, b_gw):
        refused = await refusal(gw.url, auth={"token": gw.token("bob", claims={"jti": "abc"})})
        assert refused["message"] == "token_invalid", refused
    await players(b_gw.url, b_gw.token("bob", claims={"jti": "abd"}))


async def test_revoke_a_jti_until_its_exp(cluster_factory, redis_server, redis_prefix):
    [gw] = await cluster_factory(1, jwt_max_lifetime_s=60)
    short = {"GAMEGW_JWT_MAX_LIFETIME_S": "60"}  # gamectl's own admin token must fit too
    code, out, err = await gamectl("revoke", "carol", "--jti", "j1", "--exp", "2099-01-01T00:00:00Z", "--json",
                                   "--url", gw.url, **short)
    assert code == 0, err
    assert json.loads(out)["count"] == 0
    key = f"{redis_prefix}:revoked-jti:j1"
    r = redis_sync.Redis(port=redis_server.port)
    try:
        kept_s = r.pttl(key) / 1000
        assert kept_s > 0.9 * (4070908800 - time.time())  # until the token's exp, not jwt_max_lifetime_s
        code, _, err = await gamectl("revoke", "carol", "--jti", "j1", "--url", gw.url, **short)  # again, without --exp
        assert code == 0, err
        assert r.pttl(key) / 1000 > kept_s - 60  # a later revocation never shortens the record
        code, _, err = await gamectl("revoke", "carol", "--jti", "j2", "--url", gw.url, **short)
        assert code == 0 and 55 < r.pttl(f"{redis_prefix}:revoked-jti:j2") / 1000 <= 60
    finally:
        r.close()
    for args in (["--exp", "2099-01-01"], ["--jti", "j3", "--exp", "soon"]):
        code, _, err = await gamectl("revoke", "carol", *args, "--url", gw.url, **short)
        assert code == 2 and "--exp" in err, err


def test_the_default_url_is_the_admin_listener():
    env = {"GAMEGW_JWT_SECRET": TEST_SECRET}
    shipped = load_settings(env, Path(__file__).parents[2] / "configs" / "cluster.toml")
    assert (shipped.host, shipped.admin_host, shipped.admin_port) == ("0.0.0.0", "127.0.0.1", 9000)
    assert AdminClient(shipped, None, "t").url == "http://127.0.0.1:9000"
    assert AdminClient(load_settings(env, None, {"port": 8123}), None, "t").url == "http://127.0.0.1:8123"
    anywhere = load_settings(env, None, {"admin_host": "0.0.0.0", "admin_port": 9123})
    assert AdminClient(anywhere, None, "t").url == "http://127.0.0.1:9123"
    assert AdminClient(shipped, "http://10.0.0.5:9000/", "t").url == "http://10.0.0.5:9000"
    with pytest.raises(typer.Exit) as exited:  # a port chosen at start cannot be guessed
        AdminClient(load_settings(env, None, {"admin_port": 0}), None, "t")
    assert exited.value.exit_code == 1


async def test_instances_lists_the_cluster(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    await players(b_gw.url, b_gw.token("bob"))

    async def counted() -> bool:  # a heartbeat (every 0.2 s here) carries the count
        return [i["connections"] for i in await a_gw.app[PARTS].cluster.instances()] == [0, 1]

    await eventually(counted)
    code, out, err = await gamectl("instances", "--json", "--url", a_gw.url)
    assert code == 0, err
    rows = json.loads(out)["instances"]
    assert [(r["instance"], r["alive"], r["connections"]) for r in rows] == [("inst-1", True, 0), ("inst-2", True, 1)]
    assert all(r["beat"] >= r["started"] for r in rows)
    code, out, err = await gamectl("instances", "--url", b_gw.url)
    assert code == 0, err
    assert "2 instances, 2 alive" in out
    lines = {line.split()[1]: line.split()[1:-1] for line in out.splitlines() if "inst-" in line}
    assert lines["inst-1"][:3] == ["inst-1", "│", "alive"] and lines["inst-2"][:5] == ["inst-2", "│", "alive", "│", "1"]


async def test_connections_ls_at_80_columns_keeps_users_and_sids_whole(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2)
    alice = await players(a_gw.url, a_gw.token("alice"))
    builder = await players(b_gw.url, b_gw.token("bob-the-builder"))
    await builder.call("join", {"room": "lobby"})
    await builder.call("join", {"room": "arena-7"})
    sids = {alice.client.get_sid("/game"), builder.client.get_sid("/game")}
    code, out, err = await gamectl("connections", "ls", "--url", a_gw.url, COLUMNS="80")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    words = out.split()
    assert {"alice", "bob-the-builder", "inst-1", "inst-2", "arena-7,", "lobby", "connected"} <= set(words), out
    assert sids <= set(words), out  # whole, each on its line under its user
    assert words.count("127.0.0.1") == 2 and "2 connections" in out and "…" not in out
    for user, sid in (("alice", alice.client.get_sid("/game")), ("bob-the-builder", builder.client.get_sid("/game"))):
        assert out.splitlines()[[line.split()[:1] for line in out.splitlines()].index([user]) + 1].split()[0] == sid
    # wide enough, one line per connection as before
    code, out, err = await gamectl("connections", "ls", "--url", a_gw.url, COLUMNS="200")
    assert code == 0, err
    assert next(line for line in out.splitlines() if "alice" in line).split("│")[2].strip() in sids


async def test_kick_says_how_many_connections_each_instance_held(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2, max_connections_per_user=3)
    for gw in (a_gw, b_gw, b_gw):
        await players(gw.url, gw.token("bob"))
    code, out, err = await gamectl("kick", "bob", "--url", a_gw.url)
    assert code == 0, err
    assert out.strip() == "kicked 3 connection(s) of bob: 1 on inst-1, 2 on inst-2"


async def test_ctrl_c_ends_a_watch_with_130_and_no_traceback(cluster_factory, players):
    [gw] = await cluster_factory(1)
    await players(gw.url, gw.token("alice"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    environ.update({"GAMEGW_JWT_SECRET": TEST_SECRET, "COLUMNS": "200"})
    terminal, tty = pty.openpty()  # on a terminal, as an operator runs it: the table is drawn live
    proc = await asyncio.create_subprocess_exec(GAMECTL, "connections", "ls", "--watch", "0.2", "--url", gw.url,
                                                env=environ, stdout=tty, stderr=asyncio.subprocess.PIPE)
    os.close(tty)
    try:
        seen = b""
        while b"alice" not in seen:  # it is watching
            seen += await asyncio.wait_for(asyncio.to_thread(os.read, terminal, 4096), 10)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        os.close(terminal)
    assert proc.returncode == 130
    assert err.decode() == ""  # no traceback, no "Aborted!"


async def test_a_long_command_signs_fresh_admin_tokens():
    now = [time.time()]  # one clock for the gateway and the command, advanced by hand

    def clock() -> float:
        return now[0]

    gw = await start_gateway(make_settings(), clock=clock)
    try:
        client = AdminClient(gw.settings, gw.url, None, token_ttl_s=1, clock=clock)
        first = await asyncio.to_thread(client.get, "/admin/connections")
        stale = client._token()
        now[0] += 2.1  # the first token has expired (no leeway here)
        assert (await asyncio.to_thread(client.get, "/admin/connections")) == first == {"connections": []}
        with pytest.raises(typer.Exit):  # the gateway's clock has moved too: the first token is refused
            await asyncio.to_thread(AdminClient(gw.settings, gw.url, stale).get, "/admin/connections")
    finally:
        await gw.aclose()
