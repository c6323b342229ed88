"""`gamectl serve --workers N`: N processes on one port, one cluster over Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from gamegw.server.auth.tokens import mint
from tests.conftest import TEST_SECRET, eventually, free_port, make_settings

GAMECTL = str(Path(sys.executable).with_name("gamectl"))


async def test_workers_share_a_port_and_form_one_cluster(redis_server, redis_prefix, players):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    env.update({"GAMEGW_JWT_SECRET": TEST_SECRET, "GAMEGW_REDIS_PREFIX": redis_prefix, "GAMEGW_INSTANCE_ID": "gw",
                "GAMEGW_LOG_LEVEL": "warning"})
    proc = await asyncio.create_subprocess_exec(GAMECTL, "serve", "--workers", "2", "--port", str(port),
                                                "--redis", redis_server.url, env=env)
    url = f"http://127.0.0.1:{port}"
    settings = make_settings()
    admin = {"Authorization": "Bearer " + mint(settings, "ops", role="admin")}
    try:
        async with aiohttp.ClientSession() as http:
            async def both_ready():
                try:
                    async with http.get(url + "/admin/instances", headers=admin) as resp:
                        body = await resp.json()
                        return sorted(i["instance"] for i in body["instances"]) == ["gw-w1", "gw-w2"]
                except aiohttp.ClientError:
                    return False

            await eventually(both_ready, timeout=20, interval=0.2)
            ps = [await players(url, mint(settings, f"p{i}")) for i in range(16)]
            for p in ps:
                await p.call("join", {"room": "r"})
            async with http.get(url + "/admin/connections", headers=admin) as resp:
                where = {c["instance_id"] for c in (await resp.json())["connections"]}
            assert where == {"gw-w1", "gw-w2"}  # the parent spread the connections over both
            for i, p in enumerate(ps[:4]):
                assert (await p.call("move", {"room": "r", "action": {"i": i}}))["seq"] == i + 1
            for p in ps:
                assert [m["seq"] for m in await p.wait_for("move", 4)] == [1, 2, 3, 4]
        for p in ps:
            await p.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_workers_need_redis():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    env["GAMEGW_JWT_SECRET"] = TEST_SECRET
    proc = await asyncio.create_subprocess_exec(GAMECTL, "serve", "--workers", "2", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"needs cluster mode" in err


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def test_workers_each_have_an_admin_port(redis_server, redis_prefix):
    port, admin_port = free_port(), free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    env.update({"GAMEGW_JWT_SECRET": TEST_SECRET, "GAMEGW_REDIS_PREFIX": redis_prefix, "GAMEGW_INSTANCE_ID": "gw",
                "GAMEGW_LOG_LEVEL": "warning"})
    proc = await asyncio.create_subprocess_exec(GAMECTL, "serve", "--workers", "2", "--port", str(port),
                                                "--admin-port", str(admin_port), "--redis", redis_server.url, env=env)
    admin = {"Authorization": "Bearer " + mint(make_settings(), "ops", role="admin")}
    try:
        async with aiohttp.ClientSession() as http:
            async def instances(url: str) -> list[str]:
                try:
                    async with http.get(url + "/admin/instances", headers=admin) as resp:
                        return sorted(i["instance"] for i in (await resp.json())["instances"])
                except aiohttp.ClientError:
                    return []

            for k in (0, 1):  # worker k + 1's own admin listener answers for the whole cluster
                url = f"http://127.0.0.1:{admin_port + k}"

                async def both(url: str = url) -> bool:
                    return await instances(url) == ["gw-w1", "gw-w2"]

                await eventually(both, timeout=20, interval=0.2)
                async with http.get(url + "/metrics") as resp:
                    assert resp.status == 200 and "gamegw_connections" in await resp.text()
            for path in ("/admin/instances", "/metrics"):  # and the shared game port has none of it
                async with http.get(f"http://127.0.0.1:{port}{path}", headers=admin) as resp:
                    assert resp.status == 404, path
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_workers_admin_ports_must_miss_the_game_port():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    env["GAMEGW_JWT_SECRET"] = TEST_SECRET
    proc = await asyncio.create_subprocess_exec(GAMECTL, "serve", "--workers", "3", "--port", "9001",
                                                "--admin-port", "9000", "--redis", "redis://127.0.0.1:1/0", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"take admin ports 9000-9002" in err
