"""Issue 12, finding 1: the per-user seat limit under a connect storm across two instances.

Two ``gamectl serve`` processes over one redis-server, ``max_connections_per_user = 1`` and
``on_connection_limit = replace``. Each round one fresh user opens many websockets, half on each
instance, then sends every Socket.IO CONNECT in the same turn of the event loop; each connection
that gets in joins the round's room and moves (the ``arena`` game, whose state lists the
players). Once the cluster has settled:

* exactly one connection of the user is still open and can move; every other one was told why
  (``disconnect_reason`` ``4504 session_replaced`` before its close, or a ``connect_error``
  ``connection_limit``), and ``GET /admin/connections?user=`` lists one connected entry;
* after all of them closed (and grace, had anything dropped), the room forgot the user: a
  newcomer's ``join`` ack ``members`` and ``state`` ``players`` do not list them, and Redis holds
  no ``conn``, ``sess``, ``usess``, ``user`` or ``room`` key of theirs.

A round stops the test at the first violation, with everything that round found.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis_async

from gamegw.server.auth.tokens import mint
from gamegw.server.state.keys import Keys
from tests.conftest import GatewayProcess, RedisServer, make_settings
from tests.invariants import check_leftovers, settled
from tests.leanclient import LeanClient

pytestmark = pytest.mark.timeout(120)

GRACE_S = 1.0
SWEEP_S = 0.1
SETTLE_S = 5.0  # replaced connections are closed within this (a cross-instance close takes < 2 s)
ENV = {
    "GAMEGW_GAME": "arena",
    "GAMEGW_MAX_CONNECTIONS_PER_USER": "1",
    "GAMEGW_ON_CONNECTION_LIMIT": "replace",
    "GAMEGW_GRACE_S": str(GRACE_S),
    "GAMEGW_GRACE_SWEEP_INTERVAL_S": str(SWEEP_S),
    "GAMEGW_MAX_CONNECTS_PER_ADDRESS_PER_S": "100000",
    "GAMEGW_MAX_CONNECTS_PER_ADDRESS_BURST": "100000",
    "GAMEGW_MAX_EVENTS_PER_S": "0",
}
REPLACED = {"code": 4504, "reason": "session_replaced", "reconnect": False}
STEPS = ("down", "up", "right", "left")

Processes = Callable[..., Awaitable[GatewayProcess]]


def token(user: str, **kw: Any) -> str:
    return mint(make_settings(), user, **kw)


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def pair(process_factory: Processes) -> list[GatewayProcess]:
    return [await process_factory("seat-a", **ENV), await process_factory("seat-b", **ENV)]


async def storm(urls: list[str], user: str, room: str, n: int) -> list[LeanClient]:
    """``n`` connections of ``user``, alternating over ``urls``, whose CONNECT packets leave in
    one turn of the event loop; each one that gets in joins ``room`` and moves."""
    clients = list(await asyncio.gather(*(LeanClient.open(urls[i % len(urls)]) for i in range(n))))
    for c in clients:  # no await in between: every CONNECT is written before any answer is read
        c.send_connect({"token": token(user)})

    async def play(c: LeanClient) -> None:
        if await c.wait_answer(10):
            await c.call("join", {"room": room})
            await step(c, room)

    await asyncio.gather(*(play(c) for c in clients))
    return clients


async def step(c: LeanClient, room: str) -> Any:
    """An arena move that is legal wherever the player stands: the first direction that is not
    off the grid (the player is alone in the room). The last ack, or None without one."""
    ack = None
    for direction in STEPS:
        ack = await c.call("move", {"room": room, "action": {"dir": direction}})
        if ack is None or ack.get("ok") or ack["error"]["code"] != "invalid_action":
            return ack
    return ack


async def settle(clients: list[LeanClient]) -> None:
    """Until at most one connection is open and every connection told to go is gone (bounded)."""
    async def unsettled() -> list[str]:
        open_ = [c for c in clients if c.connected]
        closing = [c for c in clients if (c.reasons or c.server_disconnected) and not c.closed.is_set()]
        return [f"{len(open_)} open, {len(closing)} closing"] if len(open_) > 1 or closing else []

    await settled(unsettled, timeout=SETTLE_S, interval=0.05)
    await asyncio.sleep(0.2)  # a close in flight


def describe(c: LeanClient) -> str:
    return (f"sid={c.sid or '-'} on {c.url.rsplit(':', 1)[1]}: session={c.session is not None} "
            f"connect_error={c.connect_error} reasons={c.reasons} 41={c.server_disconnected} "
            f"closed={c.closed.is_set()} close_code={c.close_code}")


async def judge(clients: list[LeanClient], room: str) -> tuple[list[LeanClient], list[str]]:
    """The connections still live (open, and a move is acknowledged ok), and what is wrong."""
    problems: list[str] = []
    live: list[LeanClient] = []
    acks = await asyncio.gather(*(step(c, room) if c.connected else asyncio.sleep(0) for c in clients))
    for c, ack in zip(clients, acks, strict=True):
        if c.connected:
            if ack is not None and ack.get("ok"):
                live.append(c)
            else:
                problems.append(f"open but its move got {ack}: {describe(c)}")
            continue
        error = c.connect_error or {}
        refused = c.session is None and (error.get("message"), (error.get("data") or {}).get("code")) == (
            "connection_limit", 4504)
        replaced = c.session is not None and c.reasons == [REPLACED] and c.server_disconnected
        if not (refused or replaced):
            problems.append(f"ended without a proper reason: {describe(c)}")
    if len(live) != 1:
        problems.insert(0, f"{len(live)} live connections (a move acked ok), "
                           f"{dict(Counter(c.url.rsplit(':', 1)[1] for c in live))} by port")
    return live, problems


async def admin_connections(url: str, user: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token('ops', role='admin')}"}
    async with aiohttp.ClientSession() as http, http.get(url + "/admin/connections", params={"user": user},
                                                         headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return list(body["connections"])


async def registry_problems(url: str, user: str, live: list[LeanClient]) -> list[str]:
    """The registry lists one connected entry for the user: the live connection's (bounded wait)."""
    want = sorted(c.sid for c in live)

    async def check() -> list[str]:
        entries = [e for e in await admin_connections(url, user) if e["state"] == "connected"]
        connected = sorted(e["sid"] for e in entries)
        if len(connected) <= 1 and connected == want:
            return []
        return [f"/admin/connections?user={user}: {len(connected)} connected entries "
                f"({dict(Counter(e['instance_id'] for e in entries))}), "
                f"the live connections' sids: {want[:3]}{' ...' if len(want) > 3 else ''}"]

    return await settled(check, timeout=3)


async def close_all(clients: list[LeanClient]) -> None:
    await asyncio.gather(*(c.disconnect() if c.connected else c.aclose() for c in clients))


async def cleanup_problems(redis: Any, keys: Keys, user: str, room: str) -> list[str]:
    """After everyone closed: nothing of ``user`` or ``room`` is left once grace (+ a sweep) has passed."""
    left = await settled(lambda: check_leftovers(redis, keys, users={user}, rooms={room}),
                         timeout=GRACE_S + SWEEP_S + 3)
    return [f"left in Redis after everyone closed and grace passed: {x}" for x in left]


async def newcomer_problems(url: str, room: str, newcomer: str, gone: str) -> list[str]:
    """A newcomer joining ``room`` sees only itself: ``members`` and the arena's ``players``."""
    c = await LeanClient.connect(url, {"token": token(newcomer)})
    try:
        assert c.session is not None, describe(c)
        joined = await c.call("join", {"room": room})
        state = await c.call("state", {"room": room})
    finally:
        await c.disconnect()
    problems = []
    if joined is None or joined.get("members") != [newcomer]:
        problems.append(f"a newcomer's join ack: {joined} (expected members [{newcomer!r}], without {gone!r})")
    players = sorted((state or {}).get("state", {}).get("players", {}))
    if players != [newcomer]:
        problems.append(f"a newcomer's state ack lists players {players} (expected [{newcomer!r}])")
    return problems


async def run_rounds(pair: list[GatewayProcess], redis: Any, keys: Keys, *, rounds: int, per_round: int,
                     tag: str) -> list[float]:
    urls = [p.url for p in pair]
    took = []
    for k in range(1, rounds + 1):
        started = time.monotonic()
        user, room = f"{tag}{k}", f"{tag}-room-{k}"
        clients = await storm(urls, user, room, per_round)
        problems: list[str] = []
        try:
            await settle(clients)
            live, found = await judge(clients, room)
            problems += found
            problems += await registry_problems(urls[k % 2], user, live)
        finally:
            await close_all(clients)
        problems += await cleanup_problems(redis, keys, user, room)
        problems += await newcomer_problems(urls[(k + 1) % 2], room, f"{tag}-newcomer-{k}", user)
        if problems:
            more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
            shown = "\n  ".join(problems[:25]) + more
            raise AssertionError(f"round {k} of {rounds} ({per_round} connects of {user!r} over two instances):\n  "
                                 f"{shown}")
        took.append(time.monotonic() - started)
    return took


async def test_a_connect_storm_of_one_user_leaves_one_seat(pair, redis_client, redis_prefix, figure) -> None:
    took = await run_rounds(pair, redis_client, Keys(redis_prefix), rounds=20, per_round=50, tag="storm")
    figure(f"20 rounds of 50 connects: {sum(took):.1f} s, slowest round {max(took):.2f} s")


async def test_two_simultaneous_connects_of_one_user_leave_one_seat(pair, redis_client, redis_prefix, figure) -> None:
    took = await run_rounds(pair, redis_client, Keys(redis_prefix), rounds=40, per_round=2, tag="pair")
    figure(f"40 rounds of 2 connects: {sum(took):.1f} s, slowest round {max(took):.2f} s")
