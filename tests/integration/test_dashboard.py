"""The dashboard's live feed at the API level: ``/admin/live`` sends a snapshot, then deltas as
players connect, join, move and leave, on one instance and across a cluster; nothing is
published while no page is open; an expired or revoked token ends the stream at once; the page
and its assets are served by the gateway, on the admin listener."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aredis

from gamegw.server.app import PARTS
from tests.conftest import eventually

Delta = dict[str, Any]


class LiveStream:
    """One ``/admin/live`` stream, read as the page reads it (SSE over a plain GET)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._buffer = b""
        self.deltas: list[Delta] = []

    async def event(self, timeout: float = 5) -> tuple[str, Any]:
        async def read() -> tuple[str, Any]:
            while b"\n\n" not in self._buffer:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("the stream ended")
                self._buffer += chunk
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            lines = [line for line in block.decode().split("\n") if not line.startswith(":")]
            if not lines:
                return await read()
            fields = dict(line.split(": ", 1) for line in lines)
            return fields["event"], orjson.loads(fields["data"])

        return await asyncio.wait_for(read(), timeout)

    async def delta(self, match: Callable[[Delta], bool], timeout: float = 5) -> Delta:
        """The first delta (seen so far or arriving within ``timeout``) that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for d in self.deltas:
                if match(d):
                    return d
            name, data = await self.event(max(0.01, deadline - time.monotonic()))
            assert name == "delta", (name, data)
            self.deltas.extend(data)


@asynccontextmanager
async def live(url: str, token: str) -> AsyncIterator[LiveStream]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/admin/live", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "text/event-stream"
            yield LiveStream(response)


def of_type(t: str, **fields: Any) -> Callable[[Delta], bool]:
    return lambda d: d["t"] == t and all(d.get(k) == v for k, v in fields.items())


async def test_the_live_feed_starts_with_a_snapshot_then_sends_deltas(gateway, players) -> None:
    alice = await players(gateway.url, gateway.token("alice"))
    assert (await alice.call("join", {"room": "r1"}))["ok"]
    async with live(gateway.url, gateway.token("ops", role="admin")) as stream:
        name, snap = await stream.event()
        assert name == "snapshot"
        [conn] = snap["connections"]
        assert (conn["user_id"], conn["instance_id"], conn["rooms"], conn["state"], conn["transport"]) == (
            "alice", "test-1", ["r1"], "connected", "websocket")
        [inst] = snap["instances"]
        assert inst["instance"] == "test-1" and inst["connections"] == 1
        assert inst["cpu_pct"] >= 0 and inst["rss_bytes"] > 10_000_000
        assert snap["rooms"] == {"r1": 0} and abs(snap["now"] - time.time()) < 5

        bob = await players(gateway.url, gateway.token("bob"))
        added = await stream.delta(lambda d: d["t"] == "conn" and d["conn"]["user_id"] == "bob")
        bob_sid = added["conn"]["sid"]
        assert await bob.call("join", {"room": "r1"})
        await stream.delta(of_type("join", sid=bob_sid, room="r1"))
        for n in range(3):
            assert (await alice.call("move", {"room": "r1", "action": {"n": n}}))["seq"] == n + 1
        room = await stream.delta(lambda d: d["t"] == "room" and d["seq"] == 3)
        assert room["room"] == "r1" and room["instance"] == "test-1"
        rates = (await stream.delta(lambda d: d["t"] == "instance" and d["rates"]["moves_s"] > 0))["rates"]
        assert rates["deliveries_s"] > 0 and rates["move_p99_ms"] > 0 and rates["connects_s"] >= 0
        assert await bob.call("leave", {"room": "r1"})
        await stream.delta(of_type("leave", sid=bob_sid, room="r1"))
        await bob.disconnect()
        await stream.delta(of_type("gone", sid=bob_sid))
    # the page closed: this instance stops collecting
    feed = gateway.app[PARTS].feed
    await eventually(lambda: _false(feed.watching))


async def _false(value: bool) -> bool:
    return not value


async def test_the_feed_spans_the_cluster(cluster_factory, players) -> None:
    a_gw, b_gw = await cluster_factory(2)
    await players(a_gw.url, a_gw.token("alice"))
    admin = a_gw.token("ops", role="admin")
    async with live(a_gw.url, admin) as stream:
        name, snap = await stream.event()
        assert name == "snapshot"
        assert [c["user_id"] for c in snap["connections"]] == ["alice"]
        by_name = {i["instance"]: i for i in snap["instances"]}
        assert set(by_name) == {"inst-1", "inst-2"}
        for inst in by_name.values():  # in each instance's heartbeat
            assert inst["alive"] and inst["cpu_pct"] >= 0 and inst["rss_bytes"] > 10_000_000

        bob = await players(b_gw.url, b_gw.token("bob"))
        added = await stream.delta(lambda d: d["t"] == "conn" and d["conn"]["user_id"] == "bob")
        assert added["conn"]["instance_id"] == "inst-2"
        assert (await bob.call("join", {"room": "arena"}))["ok"]
        await stream.delta(of_type("join", sid=added["conn"]["sid"], room="arena"))
        assert (await bob.call("move", {"room": "arena", "action": {}}))["ok"]
        await stream.delta(of_type("room", instance="inst-2", room="arena", seq=1))
        await stream.delta(lambda d: d["t"] == "instance" and d["instance"] == "inst-2" and d["rates"]["moves_s"] > 0)
        await stream.delta(of_type("instance", instance="inst-1"))

        async with aiohttp.ClientSession() as http:  # a kick through the other instance shows at once
            async with http.post(b_gw.url + "/admin/kick", json={"user": "bob"},
                                 headers={"Authorization": f"Bearer {admin}"}) as resp:
                assert (await resp.json())["count"] == 1
        await stream.delta(of_type("gone", sid=added["conn"]["sid"]))


async def test_nothing_is_published_while_no_page_is_open(cluster_factory, players, redis_server,
                                                          redis_prefix) -> None:
    a_gw, b_gw = await cluster_factory(2)
    feeds = [gw.app[PARTS].feed for gw in (a_gw, b_gw)]
    raw = aredis.Redis.from_url(redis_server.url, decode_responses=True)
    pubsub = raw.pubsub()
    try:
        await pubsub.subscribe(f"{redis_prefix}:dash:feed")
        await pubsub.get_message(timeout=1)  # the subscribe confirmation

        async def published(within: float) -> list[Any]:
            got = []
            deadline = time.monotonic() + within
            while (left := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message:
                    got.append(message)
            return got

        alice = await players(a_gw.url, a_gw.token("alice"))
        bob = await players(b_gw.url, b_gw.token("bob"))
        for p in (alice, bob):
            assert (await p.call("join", {"room": "r"}))["ok"]
            assert (await p.call("move", {"room": "r", "action": {}}))["ok"]
        assert await published(1.5) == []
        assert not any(f.watching for f in feeds) and not await raw.exists(f"{redis_prefix}:dash:watchers")

        async with live(b_gw.url, a_gw.token("ops", role="admin")) as stream:
            assert (await stream.event())[0] == "snapshot"
            assert all(f.watching for f in feeds)
            assert await published(1.5)  # both instances' figures, at least
        # the page closed: the watchers key lapses and every instance stops, within its TTL
        await eventually(lambda: _none_watching(feeds), timeout=8)
        await published(0.5)  # a batch already on its way
        assert (await alice.call("move", {"room": "r", "action": {}}))["ok"]
        assert await published(1.5) == []
    finally:
        await pubsub.aclose()
        await raw.aclose()


async def _none_watching(feeds: list[Any]) -> bool:
    return not any(f.watching for f in feeds)


async def test_a_revoked_token_ends_the_stream_at_once(cluster_factory) -> None:
    a_gw, b_gw = await cluster_factory(2)
    page_token = a_gw.token("dashboard", role="admin")
    async with live(b_gw.url, page_token) as stream:
        assert (await stream.event())[0] == "snapshot"
        async with aiohttp.ClientSession() as http:
            async with http.post(a_gw.url + "/admin/revoke", json={"user": "dashboard"},
                                 headers={"Authorization": f"Bearer {a_gw.token('root', role='admin')}"}) as resp:
                assert resp.status == 200
        revoked_at = time.monotonic()
        while True:
            name, data = await stream.event(timeout=3)
            if name == "signed_out":
                break
        assert data == {"code": "token_invalid", "message": "token revoked"}
        assert time.monotonic() - revoked_at < 1.5
        assert await stream.response.content.read() == b""  # and the stream ended
    async with aiohttp.ClientSession() as http:
        async with http.get(b_gw.url + "/admin/live", headers={"Authorization": f"Bearer {page_token}"}) as resp:
            assert (resp.status, await resp.json()) == (401, {"error": {"code": "token_invalid",
                                                                        "message": "token revoked"}})


async def test_an_expired_token_ends_the_stream(gateway) -> None:
    async with live(gateway.url, gateway.token("dashboard", role="admin", ttl_s=2)) as stream:
        assert (await stream.event())[0] == "snapshot"
        started = time.monotonic()
        while True:
            name, data = await stream.event(timeout=4)
            if name == "signed_out":
                break
        assert data["code"] == "token_expired" and time.monotonic() - started < 3.5


async def test_the_stream_needs_an_admin_token(gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for headers, status, code in (({}, 401, "token_missing"),
                                      ({"Authorization": f"Bearer {gateway.token('bob')}"}, 403, "forbidden")):
            async with http.get(gateway.url + "/admin/live", headers=headers) as resp:
                assert (resp.status, (await resp.json())["error"]["code"]) == (status, code)
    assert not gateway.app[PARTS].feed.watching


async def test_the_page_is_served_on_the_admin_listener(gateway_factory) -> None:
    gw = await gateway_factory(admin_port=0)
    admin_url = gw.app[PARTS].admin_url
    async with aiohttp.ClientSession() as http:
        async with http.get(admin_url + "/admin/ui") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert 'src="ui/static/app.js"' in page and "http" not in page.replace("http-equiv", "")  # nothing remote
        for name, kind in (("app.js", "text/javascript"), ("view.js", "text/javascript"),
                           ("stream.js", "text/javascript"), ("style.css", "text/css")):
            async with http.get(f"{admin_url}/admin/ui/static/{name}") as resp:
                assert (resp.status, resp.content_type) == (200, kind), name
        for path in ("/admin/ui/static/index.html", "/admin/ui/static/..%2Ffeed.py", "/admin/ui/static/nope.js"):
            async with http.get(admin_url + path) as resp:
                assert resp.status == 404, path
        async with http.get(admin_url + "/admin/ui/", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (308, "/admin/ui")
        for path in ("/admin/ui", "/admin/live"):  # not on the players' port
            async with http.get(gw.url + path) as resp:
                assert resp.status == 404, path


async def test_an_open_stream_does_not_hold_up_a_stop(cluster_factory) -> None:
    [gw] = await cluster_factory(1)
    async with live(gw.url, gw.token("ops", role="admin")) as stream:
        assert (await stream.event())[0] == "snapshot"
        started = time.monotonic()
        closing = asyncio.create_task(gw.aclose())
        while (name := (await stream.event())[0]) == "delta":
            pass
        assert name == "resync"  # the page opens it again, on another instance
        await closing
        assert time.monotonic() - started < 1.0  # not the runner's shutdown_timeout
