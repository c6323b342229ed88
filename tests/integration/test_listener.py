"""The pub/sub listener: proven alive by a loopback probe, back after its connection is killed,
and restarted when it goes deaf (python-socketio#1581)."""

from __future__ import annotations

import aiohttp

from gamegw.server.app import PARTS
from gamegw.server.logs import stop_task
from tests.conftest import eventually


async def ready(gw) -> bool:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/readyz") as resp:
            return resp.status == 200


async def test_cross_instance_moves_survive_client_kill_type_pubsub(cluster_factory, players, redis_server):
    a_gw, b_gw = await cluster_factory(2)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    assert await ready(a_gw) and await ready(b_gw)
    assert redis_server.kill_pubsub() >= 2  # both instances' listeners (on any master of a cluster)
    await eventually(lambda: ready(a_gw), timeout=10)
    await eventually(lambda: ready(b_gw), timeout=10)
    assert (await a.call("move", {"room": "r", "action": {"after": "kill"}}))["seq"] == 1
    [move] = await b.wait_for("move", 1)
    assert move["action"] == {"after": "kill"}


async def test_a_deaf_listener_is_noticed_and_restarted(cluster_factory, players):
    a_gw, b_gw = await cluster_factory(2, bus_probe_interval_s=0.3)
    a = await players(a_gw.url, a_gw.token("alice"))
    b = await players(b_gw.url, b_gw.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    bus = b_gw.app[PARTS].bus
    await stop_task(bus._task)  # fault injection: the listener stops hearing, and nothing says so
    assert not await ready(b_gw)  # /readyz's own probe sees it at once
    await eventually(lambda: ready(b_gw), timeout=10)  # the probe loop restarted the listener
    assert b_gw.app[PARTS].metrics.listener_restarts._value.get() == 1
    assert (await a.call("move", {"room": "r", "action": {}}))["seq"] == 1
    await b.wait_for("move", 1)
