"""``last seen`` (``connections ls``) follows heartbeats too: an idle player's pongs count."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from gamegw.server.gateway import TOUCH_EVERY_S
from tests.conftest import eventually


async def connections(url: str, token: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/admin/connections", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            conns: list[dict[str, Any]] = (await resp.json())["connections"]
            return conns


@pytest.mark.parametrize("state", ["memory", "redis"])
async def test_an_idle_players_last_seen_follows_its_heartbeats(gateway_factory, cluster_factory, players,
                                                                state: str) -> None:
    heartbeat = {"ping_interval_s": 0.2, "ping_timeout_s": 1.0}
    [gw] = await cluster_factory(1, **heartbeat) if state == "redis" else [await gateway_factory(**heartbeat)]
    admin = gw.token("ops", role="admin")
    p = await players(gw.url, gw.token("idle"))
    await p.wait_for("session")  # and from now on sends nothing but pongs
    [entry] = await connections(gw.url, admin)
    since = entry["connected_at"]
    assert entry["last_seen"] == since

    async def seen_later() -> bool:
        [now] = await connections(gw.url, admin)
        return bool(now["last_seen"] >= since + TOUCH_EVERY_S)

    await eventually(seen_later, timeout=4 * TOUCH_EVERY_S)
    [entry] = await connections(gw.url, admin)
    assert since + TOUCH_EVERY_S <= entry["last_seen"] <= time.time()
    assert entry["connected_at"] == since and entry["state"] == "connected"
