"""Backend hooks (docs/protocol.md, "Backend hooks") against a real HTTP server: an aiohttp app
on a free loopback port inside the test, which records every request and answers as told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from gamegw.server.app import PARTS
from tests.conftest import Gateway, eventually, free_port, refusal

Answer = Callable[[dict[str, Any]], Awaitable[Any]]


async def allow(body: dict[str, Any]) -> Any:
    return {"ok": True}


class HookServer:
    """A backend: ``answer(body)`` returns the JSON to send (or a ``web.Response``)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: Answer = allow
        self.gate = asyncio.Event()  # what ``held`` answers wait for: the test opens it
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        answer = await self.answer(body)
        return answer if isinstance(answer, web.StreamResponse) else web.json_response(answer)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["event"] == event]

    async def held(self, body: dict[str, Any]) -> Any:
        """Answer once the test opens the gate: a hook as slow as the test needs, with no timer."""
        await self.gate.wait()
        return {"ok": True}

    async def requested(self, count: int) -> None:
        async def enough() -> bool:
            return len(self.requests) >= count

        await eventually(enough)

    async def aclose(self) -> None:
        self.gate.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    server = HookServer()
    await server.start()
    yield server
    await server.aclose()


def calls(gw: Gateway, event: str, result: str) -> float:
    value = gw.app[PARTS].metrics.registry.get_sample_value(
        "gamegw_hook_calls_total", {"event": event, "result": result})
    return value or 0.0


def metric(gw: Gateway, name: str) -> float:
    return gw.app[PARTS].metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]], ids=["websocket", "polling"])
async def test_a_vetoed_move_takes_no_seq_and_reaches_nobody(gateway_factory, players, hook, transports):
    async def answer(body: dict[str, Any]) -> Any:
        if body["action"].get("cheat"):
            return {"ok": False, "code": "no_credits", "message": "buy more credits"}
        return {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="move")
    a = await players(gw.url, gw.token("alice"), transports=transports)
    b = await players(gw.url, gw.token("bob"), transports=transports)
    await a.call("join", {"room": "duel"})
    await b.call("join", {"room": "duel"})
    assert await a.call("move", {"room": "duel", "action": {"i": 1}}) == {"ok": True, "seq": 1}
    vetoed = await a.call("move", {"room": "duel", "action": {"cheat": True}})
    assert vetoed == {"ok": False, "error": {"code": "no_credits", "message": "buy more credits"}}
    assert await b.call("move", {"room": "duel", "action": {"i": 2}}) == {"ok": True, "seq": 2}
    assert await b.call("move", {"room": "duel", "action": {"i": 3}}) == {"ok": True, "seq": 3}
    for p in (a, b):  # moves arrive in seq order: a vetoed move delivered would come before seq 3
        await p.wait_for("move", 3)
        assert [(m["seq"], m["action"]) for m in p.events["move"]] == [(1, {"i": 1}), (2, {"i": 2}), (3, {"i": 3})]
    session_a = a.events["session"][0]["session_id"]
    assert hook.requests[1] == {"event": "move", "user": "alice", "room": "duel", "action": {"cheat": True},
                                "session": session_a, "instance": "test-1"}
    assert [r["event"] for r in hook.requests] == ["move"] * 4  # join is not a hooked event here
    assert (calls(gw, "move", "ok"), calls(gw, "move", "veto")) == (3, 1)


async def test_a_vetoed_join_and_leave(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        if body["room"] == "vip":
            return {"ok": False, "code": "club.members_only", "message": "members only"}
        if body["event"] == "leave":
            return {"ok": False, "code": "match_running"}  # no message: the gateway supplies one
        return {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="join,leave")
    a = await players(gw.url, gw.token("alice"))
    assert await a.call("join", {"room": "vip"}) == {
        "ok": False, "error": {"code": "club.members_only", "message": "members only"}}
    assert (await a.call("join", {"room": "lobby"}))["ok"] is True
    assert await a.call("leave", {"room": "lobby"}) == {
        "ok": False, "error": {"code": "match_running", "message": "refused by the backend"}}
    state = await a.call("state", {"room": "lobby"})
    assert state["ok"] is True  # still in the room
    assert (await a.call("state", {"room": "vip"}))["error"]["code"] == "not_in_room"
    assert [(r["event"], r["room"], r["user"]) for r in hook.requests] == [
        ("join", "vip", "alice"), ("join", "lobby", "alice"), ("leave", "lobby", "alice")]
    assert all(r["action"] is None for r in hook.requests)


async def test_a_code_that_is_not_an_identifier_becomes_hook_refused(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        return {"ok": False, "code": "Not Allowed!", "message": "no"}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="join")
    a = await players(gw.url, gw.token("alice"))
    assert await a.call("join", {"room": "r"}) == {"ok": False, "error": {"code": "hook_refused", "message": "no"}}
    assert gw.app[PARTS].metrics.registry.get_sample_value(
        "gamegw_acks_total", {"event": "join", "result": "hook_refused"}) == 1


async def test_a_vetoed_connect_is_refused_with_the_hooks_code(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        if body["user"] == "mallory":
            return {"ok": False, "code": "banned", "message": "banned until Friday"}
        return {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="connect")
    error = await refusal(gw.url, auth={"token": gw.token("mallory")})
    assert error == {"message": "banned", "data": {"code": 4403, "reason": "banned until Friday"}}
    alice = await players(gw.url, gw.token("alice"))
    await alice.wait_for("session")
    assert hook.requests == [
        {"event": "connect", "user": user, "room": None, "action": None, "session": None, "instance": "test-1"}
        for user in ("mallory", "alice")]
    assert gw.app[PARTS].metrics.registry.get_sample_value("gamegw_refusals_total", {"code": "hook_refused"}) == 1


async def test_an_unhooked_event_never_calls_the_hook(gateway_factory, players, hook):
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="connect")
    a = await players(gw.url, gw.token("alice"))
    await a.call("join", {"room": "r"})
    assert (await a.call("move", {"room": "r", "action": {}}))["ok"] is True
    assert [r["event"] for r in hook.requests] == ["connect"]


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_a_slow_hook_times_out_and_follows_hooks_on_error(gateway_factory, players, hook, on_error):
    hook.answer = hook.held  # never answers within the test: only the timeout can end the call
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="connect,move", hooks_timeout_s=0.2,
                               hooks_on_error=on_error)
    if on_error == "deny":
        error = await refusal(gw.url, auth={"token": gw.token("alice")})
        assert error == {"message": "hook_unavailable",
                         "data": {"code": 4002, "reason": "the backend hook is unavailable, retry"}}
        assert calls(gw, "connect", "timeout") == 1
        return
    a = await players(gw.url, gw.token("alice"))
    await a.call("join", {"room": "r"})
    assert await a.call("move", {"room": "r", "action": {}}) == {"ok": True, "seq": 1}
    assert (calls(gw, "connect", "timeout"), calls(gw, "move", "timeout")) == (1, 1)


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_a_hook_that_is_down_follows_hooks_on_error(gateway_factory, players, on_error):
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: connection refused
    gw = await gateway_factory(hooks_url=down, hooks_events="join,move", hooks_on_error=on_error)
    a = await players(gw.url, gw.token("alice"))
    joined = await a.call("join", {"room": "r"})
    if on_error == "allow":
        assert joined["ok"] is True
        assert await a.call("move", {"room": "r", "action": {}}) == {"ok": True, "seq": 1}
        assert (calls(gw, "join", "error"), calls(gw, "move", "error")) == (1, 1)
    else:
        assert joined == {"ok": False, "error": {"code": "hook_unavailable",
                                                 "message": "the backend hook is unavailable, retry"}}
        assert calls(gw, "join", "error") == 1
        assert gw.app[PARTS].metrics.registry.get_sample_value(
            "gamegw_acks_total", {"event": "join", "result": "hook_unavailable"}) == 1


async def test_a_hook_answering_500_or_garbage_is_a_failure(gateway_factory, players, hook):
    answers = iter([web.Response(status=500), web.Response(text="yes", content_type="application/json"),
                    {"allowed": True}])

    async def answer(body: dict[str, Any]) -> Any:
        return next(answers)

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="join", hooks_on_error="deny")
    a = await players(gw.url, gw.token("alice"))
    for _ in range(3):
        assert (await a.call("join", {"room": "r"}))["error"]["code"] == "hook_unavailable"
    assert calls(gw, "join", "error") == 3


async def test_the_breaker_opens_stops_calling_then_probes_and_closes(gateway_factory, players, hook):
    healthy = False

    async def answer(body: dict[str, Any]) -> Any:
        return {"ok": True} if healthy else web.Response(status=503)

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="move", hooks_on_error="allow",
                               hooks_breaker_failures=3, hooks_breaker_cooldown_s=30)
    now = [1000.0]
    gw.app[PARTS].gateway.hooks.breaker.clock = lambda: now[0]  # the cooldown on a clock of the test's
    a = await players(gw.url, gw.token("alice"))
    await a.call("join", {"room": "r"})

    async def moves(n: int) -> None:
        for _ in range(n):
            assert (await a.call("move", {"room": "r", "action": {}}))["ok"] is True  # allow, even while open

    await moves(8)
    assert len(hook.requests) == 3  # the breaker opened after three failures in a row
    assert (calls(gw, "move", "error"), calls(gw, "move", "open")) == (3, 5)
    assert (metric(gw, "gamegw_hook_breaker_open"), metric(gw, "gamegw_hook_breaker_opens_total")) == (1, 1)

    now[0] += 29.9
    await moves(2)
    assert len(hook.requests) == 3
    now[0] += 0.1  # the cooldown is over: one probe goes, fails, and the breaker opens again
    await moves(3)
    assert len(hook.requests) == 4
    assert metric(gw, "gamegw_hook_breaker_open") == 1

    healthy = True
    now[0] += 30
    await moves(3)  # the probe succeeds: closed, every move calls the hook again
    assert len(hook.requests) == 7
    assert calls(gw, "move", "ok") == 3
    assert metric(gw, "gamegw_hook_breaker_open") == 0
    assert metric(gw, "gamegw_hook_breaker_opens_total") == 1  # re-opening after a failed probe is not a new opening


async def test_while_open_deny_refuses_without_calling(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        return web.Response(status=500)

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="move", hooks_on_error="deny",
                               hooks_breaker_failures=2, hooks_breaker_cooldown_s=60)
    a = await players(gw.url, gw.token("alice"))
    await a.call("join", {"room": "r"})
    for _ in range(5):
        assert (await a.call("move", {"room": "r", "action": {}}))["error"]["code"] == "hook_unavailable"
    assert len(hook.requests) == 2
    await a.call("state", {"room": "r"})
    assert (await a.call("state", {"room": "r"}))["seq"] == 0  # no move took a seq


async def test_a_slow_hook_in_one_room_does_not_stall_another_room(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        return await hook.held(body) if body["room"] == "slow" else {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="move", hooks_timeout_s=5)
    a = await players(gw.url, gw.token("alice"))
    b = await players(gw.url, gw.token("bob"))
    await a.call("join", {"room": "slow"})
    await b.call("join", {"room": "fast"})
    pending = asyncio.create_task(a.call("move", {"room": "slow", "action": {}}))
    await hook.requested(1)  # alice's move is waiting for the hook, which waits for the gate
    for i in range(5):
        assert await b.call("move", {"room": "fast", "action": {}}) == {"ok": True, "seq": i + 1}
    assert not pending.done()
    hook.gate.set()
    assert await pending == {"ok": True, "seq": 1}


async def test_one_connections_moves_keep_their_order_whatever_the_hook_takes(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        # the first move's hook is the slowest (a backend's delay, not one of the gateway's timers)
        await asyncio.sleep(0.3 if body["action"]["i"] == 0 else 0)
        return {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="move")
    a = await players(gw.url, gw.token("alice"))
    await a.call("join", {"room": "r"})
    acks = await asyncio.gather(*(a.call("move", {"room": "r", "action": {"i": i}}) for i in range(4)))
    assert [ack["seq"] for ack in acks] == [1, 2, 3, 4]
    moves = await a.wait_for("move", 4)
    assert [m["action"]["i"] for m in moves] == [0, 1, 2, 3]


async def test_moves_of_two_players_in_one_room_are_numbered_as_their_hooks_answer(gateway_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        return await hook.held(body) if body["user"] == "alice" else {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="move")
    a = await players(gw.url, gw.token("alice"))
    b = await players(gw.url, gw.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    slow_ack = asyncio.create_task(a.call("move", {"room": "r", "action": {"by": "alice"}}))
    await hook.requested(1)  # alice's move asked first...
    assert await b.call("move", {"room": "r", "action": {"by": "bob"}}) == {"ok": True, "seq": 1}
    hook.gate.set()
    assert await slow_ack == {"ok": True, "seq": 2}  # ...but bob's hook answered first
    for p in (a, b):  # one order for every member, no gaps
        moves = await p.wait_for("move", 2)
        assert [(m["seq"], m["action"]["by"]) for m in moves] == [(1, "bob"), (2, "alice")]
    assert gw.app[PARTS].metrics.registry.get_sample_value("gamegw_hook_seconds_count", {"event": "move"}) == 2


async def test_a_vetoed_move_in_a_cluster_takes_no_seq(cluster_factory, players, hook):
    async def answer(body: dict[str, Any]) -> Any:
        return {"ok": False, "code": "not_your_turn"} if body["action"].get("early") else {"ok": True}

    hook.answer = answer
    gw1, gw2 = await cluster_factory(2, hooks_url=hook.url, hooks_events="move")
    a = await players(gw1.url, gw1.token("alice"))
    b = await players(gw2.url, gw2.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    assert (await a.call("move", {"room": "r", "action": {"early": True}}))["error"]["code"] == "not_your_turn"
    assert await b.call("move", {"room": "r", "action": {}}) == {"ok": True, "seq": 1}
    assert [m["seq"] for m in await a.wait_for("move")] == [1]
    assert {r["instance"] for r in hook.requests} == {"inst-1", "inst-2"}


async def test_a_refused_reconnect_does_not_resume_and_grace_runs_out(gateway_factory, players, hook):
    banned: set[str] = set()

    async def answer(body: dict[str, Any]) -> Any:
        return {"ok": False, "code": "banned"} if body["user"] in banned else {"ok": True}

    hook.answer = answer
    gw = await gateway_factory(hooks_url=hook.url, hooks_events="connect", grace_s=0.5)
    a = await players(gw.url, gw.token("alice"))
    b = await players(gw.url, gw.token("bob"))
    await a.call("join", {"room": "r"})
    await b.call("join", {"room": "r"})
    assert await gw.app[PARTS].gateway.drop_local("alice") == 1
    await b.wait_for("player_disconnected")
    banned.add("alice")
    error = await refusal(gw.url, auth={"token": gw.token("alice")})
    assert error == {"message": "banned", "data": {"code": 4403, "reason": "refused by the backend"}}
    assert "player_reconnected" not in b.events
    [left] = await b.wait_for("player_left", timeout=5)
    assert left == {"room": "r", "user": "alice", "reason": "timeout"}
