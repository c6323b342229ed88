"""Faults under load, with real processes: Redis stopped (and back with or without its data),
its pub/sub connections killed, an instance SIGKILLed, an instance SIGTERMed.

Every test runs seats (a player in a room, moving every 50 ms) on two ``gamectl serve``
processes, causes the fault, lets play go on, and then checks what the contract promises:
each player saw its room's ``seq`` with no gap and no repeat, every acknowledged move reached
every member, the registry has each user exactly once, and nobody heard ``player_left``. The
figures (time to re-sync or resume, moves played through the outage, moves lost) are printed.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from gamegw.server.auth.tokens import mint
from tests.conftest import RedisServer, eventually, make_settings
from tests.redis_servers import TOPOLOGY, RedisClusterServer

pytestmark = pytest.mark.timeout(120)


@dataclass
class Seat:
    """One player in one room, across reconnections: what it sent, what came back, what it saw."""

    user: str
    room: str
    url: str
    player: Any = None
    received: list[int] = field(default_factory=list)  # seqs of the room's move events, in order
    moves: list[dict[str, Any]] = field(default_factory=list)  # those move events
    acked: list[tuple[float, int]] = field(default_factory=list)  # (when, seq) of ok acks
    errors: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[float, str]] = field(default_factory=list)  # (when, code) of the errors
    left_events: list[Any] = field(default_factory=list)
    moved: int = 0
    action: Callable[[Seat], dict[str, Any]] | None = None  # the next move's action; else {"n": moved}

    def harvest(self) -> None:
        """Take the events the current connection has recorded into the seat's history."""
        if self.player is None:
            return
        moves = [m for m in self.player.events.pop("move", []) if m["room"] == self.room]
        self.received.extend(m["seq"] for m in moves)
        self.moves.extend(moves)
        self.left_events.extend(self.player.events.pop("player_left", []))

    async def play(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            player = self.player
            if player is None or not player.client.connected:
                await asyncio.sleep(0.05)
                continue
            self.moved += 1
            try:
                action = self.action(self) if self.action else {"n": self.moved}
                ack = await player.call("move", {"room": self.room, "action": action}, timeout=3)
            except (TimeoutError, socketio.exceptions.SocketIOError):
                self.errors["no_ack"] += 1
                self.failed.append((time.monotonic(), "no_ack"))
            else:
                if ack.get("ok"):
                    self.acked.append((time.monotonic(), ack["seq"]))
                else:
                    self.errors[ack["error"]["code"]] += 1
                    self.failed.append((time.monotonic(), ack["error"]["code"]))
            await asyncio.sleep(0.05)


class Table:
    """The seats of one test and the checks every fault test makes."""

    def __init__(self, players: Any) -> None:
        self.players = players
        self.seats: list[Seat] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def seat(self, user: str, room: str, url: str) -> Seat:
        seat = Seat(user, room, url)
        seat.player = await self.players(url, token(user))
        ack = await seat.player.call("join", {"room": room})
        assert ack["ok"], ack
        self.seats.append(seat)
        return seat

    async def resume(self, seat: Seat, url: str) -> float:
        """Reconnect ``seat`` to ``url`` as a stock client does, with ``auth.last_seq``; the time
        until its ``session`` says it resumed."""
        seat.harvest()
        started = time.monotonic()
        last = {seat.room: seat.received[-1]} if seat.received else {}
        seat.player = await self.players(url, None, auth={"token": token(seat.user), "last_seq": last})
        [session] = await seat.player.wait_for("session")
        assert session["resumed"], session
        seat.url = url
        return time.monotonic() - started

    def start(self) -> None:
        self.tasks = [asyncio.create_task(s.play(self.stop)) for s in self.seats]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await asyncio.sleep(1.0)  # the last broadcasts
        for seat in self.seats:
            seat.harvest()

    def check_sequences(self) -> dict[str, int]:
        """No gap, no repeat, nothing acknowledged and not delivered; returns the figures."""
        lost = 0
        for seat in self.seats:
            seqs = seat.received
            assert seqs, f"{seat.user} saw no move"
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{seat.user}: gap or repeat in {seqs}"
        for room in {s.room for s in self.seats}:
            members = [s for s in self.seats if s.room == room]
            acked = {seq for s in members for _, seq in s.acked}
            for seat in members:
                missing = acked - set(seat.received)
                lost += len(missing)
                assert not missing, (f"{seat.user} (connected: {seat.player.client.connected}, errors: "
                                     f"{dict(seat.errors)}, last seen {seat.received[-1]}) never got "
                                     f"acknowledged moves {sorted(missing)[:10]}")
        assert all(not s.left_events for s in self.seats), "player_left was sent"
        return {"moves_acked": sum(len(s.acked) for s in self.seats), "moves_lost": lost}


def token(user: str, **kw: Any) -> str:
    return mint(make_settings(), user, **kw)


async def registry(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
            url + "/admin/connections", headers={"Authorization": f"Bearer {token('ops', role='admin')}"}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return list(body["connections"])


async def text(url: str, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + path) as resp:
        return await resp.text()


async def status(url: str, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + path) as resp:
        return resp.status


def check_registry(conns: list[dict[str, Any]], users: set[str], states: set[str] | None = None) -> None:
    seen = Counter(c["user_id"] for c in conns if c["user_id"] in users)
    assert seen == Counter({u: 1 for u in users}), f"registry: {seen}"
    if states is not None:
        assert {c["state"] for c in conns if c["user_id"] in users} <= states


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server of this test's own (a three-master cluster with GAMEGW_TEST_TOPOLOGY=cluster),
    with append-only files: it can be stopped and started again, with its data or (after
    :func:`wipe`) empty."""
    server: RedisServer | RedisClusterServer
    if TOPOLOGY == "cluster":
        server = RedisClusterServer(tmp_path / "redis", persist=True)
    else:
        server = RedisServer(tmp_path / "redis", persist=True)
        server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


def wipe(server: RedisServer | RedisClusterServer) -> None:
    if isinstance(server, RedisClusterServer):
        server.wipe()
        return
    shutil.rmtree(server.workdir)
    server.workdir.mkdir()



@pytest.mark.parametrize("comes_back", ["with_data", "empty"])
async def test_redis_stopped_for_5s_under_load(process_factory, players, own_redis, comes_back: str, figure) -> None:
    env = {"GAMEGW_REDIS_URL": own_redis.url, "GAMEGW_REDIS_TIMEOUT_S": "0.5", "GAMEGW_GRACE_S": "30"}
    a = await process_factory("inst-a", **env)
    b = await process_factory("inst-b", **env)
    table = Table(players)
    solo = [await table.seat(f"solo{i}", "solo", a.url) for i in range(4)]  # everyone on instance a
    mixed = [await table.seat(f"mixed{i}", "mixed", (a.url, b.url)[i % 2]) for i in range(4)]
    table.start()
    await asyncio.sleep(1.5)

    own_redis.stop()
    stopped = time.monotonic()
    await asyncio.sleep(1.5)
    assert await status(a.url, "/readyz") == 503 and await status(b.url, "/readyz") == 503
    assert await status(a.url, "/healthz") == 200
    await asyncio.sleep(3.5)
    if comes_back == "empty":
        wipe(own_redis)
    own_redis.start()
    started = time.monotonic()

    async def mixed_room_plays() -> bool:
        return any(t > started for s in mixed for t, _ in s.acked)

    await eventually(mixed_room_plays, timeout=15)
    resync_s = min(t for s in mixed for t, _ in s.acked if t > started) - started
    await eventually(lambda: _ready(a.url, b.url), timeout=10)
    await asyncio.sleep(2.0)
    await table.finish()

    during = [seq for s in solo for t, seq in s.acked if stopped + 0.5 < t < started]
    try:
        figures = table.check_sequences()
    except AssertionError:  # what each instance says it did, to tell a delivery bug from a test bug
        for gw in (a, b):
            print(gw.instance_id, [line for line in (await text(gw.url, "/metrics")).splitlines()
                                   if line.startswith(("gamegw_move", "gamegw_offline", "gamegw_duplicate",
                                                       "gamegw_redis_rec", "gamegw_deliveries", "gamegw_listener"))])
        raise
    assert len(during) > 20, "local players stopped playing while Redis was down"
    mixed_errors = sum((s.errors for s in mixed), Counter())
    assert mixed_errors["unavailable"] > 0 and mixed_errors["no_ack"] == 0, mixed_errors
    for seat in table.seats:
        assert seat.player.client.connected, f"{seat.user} lost its connection"
    check_registry(await registry(b.url), {s.user for s in table.seats}, {"connected"})
    figure(f"redis {comes_back}: outage {started - stopped:.1f} s, cross-instance play back after "
          f"{resync_s:.2f} s, {len(during)} moves played locally during the outage, "
          f"{mixed_errors['unavailable']} unavailable acks in the spanning room, {figures}")


async def _ready(*urls: str) -> bool:
    return all([await status(url, "/readyz") == 200 for url in urls])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_an_instance_dies_under_load_and_its_players_resume(process_factory, players, sig, figure) -> None:
    env = {"GAMEGW_GRACE_S": "30", "GAMEGW_DRAIN_S": "5"}
    doomed = await process_factory("doomed", **env)
    survivor = await process_factory("survivor", **env)
    table = Table(players)
    for i in range(8):
        await table.seat(f"p{i}", f"room{i % 2}", (doomed.url, survivor.url)[i % 2 == 0 and i % 4 == 0])
    moved = [s for s in table.seats if s.url == doomed.url]
    assert len(moved) == 6
    table.start()
    await asyncio.sleep(1.5)

    killed = time.monotonic()
    doomed.kill(sig)
    if sig == signal.SIGTERM:
        code = await asyncio.to_thread(doomed.proc.wait, 10)
        exited_s = time.monotonic() - killed
        assert code == 0 and exited_s < 5  # within GAMEGW_DRAIN_S
        for seat in moved:
            [reason] = seat.player.events["disconnect_reason"]
            assert reason == {"code": 4000, "reason": "shutdown", "reconnect": True}

    async def all_gone() -> bool:
        return all(not s.player.client.connected for s in moved)

    await eventually(all_gone, timeout=15)  # SIGKILL: the ping timeout, or the socket's reset
    resume_s = await asyncio.gather(*(table.resume(s, survivor.url) for s in moved))
    since_kill = time.monotonic() - killed
    exit_note = f", exited after {exited_s:.2f} s" if sig == signal.SIGTERM else ""
    await asyncio.sleep(1.5)
    await table.finish()

    figures = table.check_sequences()
    users = {s.user for s in table.seats}

    async def one_entry_each() -> bool:
        conns = await registry(survivor.url)
        return Counter(c["user_id"] for c in conns if c["user_id"] in users) == Counter(dict.fromkeys(users, 1))

    await eventually(one_entry_each, timeout=5)
    check_registry(await registry(survivor.url), users, {"connected"})
    figure(f"{sig.name}: {len(moved)} players resumed on the survivor in {max(resume_s):.2f} s "
          f"(all back {since_kill:.2f} s after the signal{exit_note}), {figures}")


async def test_pubsub_connections_killed_under_load(process_factory, players, own_redis, figure) -> None:
    """``CLIENT KILL TYPE pubsub``: what was published while the listeners were away is read
    from the rooms' logs; nobody misses a move or sees one twice."""
    env = {"GAMEGW_REDIS_URL": own_redis.url, "GAMEGW_BUS_PROBE_INTERVAL_S": "0.5"}
    a = await process_factory("inst-a", **env)
    b = await process_factory("inst-b", **env)
    table = Table(players)
    for i in range(6):
        await table.seat(f"p{i}", f"room{i % 2}", (a.url, b.url)[i % 2 == 0 and i < 4])
    table.start()
    await asyncio.sleep(1.5)
    killed = time.monotonic()
    assert own_redis.kill_pubsub() >= 2  # both instances' listeners
    await eventually(lambda: _ready(a.url, b.url), timeout=10)
    back_s = time.monotonic() - killed
    await asyncio.sleep(2.0)
    await table.finish()

    figures = table.check_sequences()
    gaps = 0
    for gw in (a, b):
        for line in (await text(gw.url, "/metrics")).splitlines():
            if line.startswith("gamegw_move_gaps_total "):
                gaps += int(float(line.split()[1]))
            assert not line.startswith("gamegw_moves_missing_total ") or float(line.split()[1]) == 0
    check_registry(await registry(a.url), {s.user for s in table.seats}, {"connected"})
    figure(f"CLIENT KILL TYPE pubsub: listeners back and proven in {back_s:.2f} s, {gaps} gaps filled from "
          f"the logs, {figures}")


async def test_redis_back_empty_keeps_the_seq_a_listener_was_delivered(process_factory, players, own_redis) -> None:
    """Commit 8c67039's recovery floor: an instance whose players only listened in a room (the
    moves came from another instance's players, who have since left) puts the room's ``seq``
    back at least at the last seq its bus delivered. Otherwise a Redis that comes back empty
    restarts the room at 1 and the listener sees seq 1 twice, for two different moves. (Kills
    the mutant ``Bus.delivered() -> {}``: the seats' own acks are the only other floor.)"""
    env = {"GAMEGW_REDIS_URL": own_redis.url, "GAMEGW_REDIS_TIMEOUT_S": "0.5", "GAMEGW_GRACE_S": "30"}
    a = await process_factory("inst-a", **env)
    b = await process_factory("inst-b", **env)
    mover = await players(a.url, token("mover"))
    listener = await players(b.url, token("listener"))
    assert (await listener.call("join", {"room": "r"}))["seq"] == 0
    await mover.call("join", {"room": "r"})
    for i in range(5):
        assert (await mover.call("move", {"room": "r", "action": {"i": i}}))["seq"] == i + 1
    await listener.wait_for("move", 5)
    assert (await mover.call("leave", {"room": "r"}))["ok"] is True

    own_redis.stop()
    wipe(own_redis)
    own_redis.start()
    await eventually(lambda: _ready(a.url, b.url), timeout=15)

    acks: list[dict[str, Any]] = []

    async def moved() -> bool:
        acks.append(await listener.call("move", {"room": "r", "action": {"after": True}}))
        return bool(acks[-1].get("ok"))

    await eventually(moved, timeout=10)  # the first move after the outage may find recovery under way
    assert acks[-1] == {"ok": True, "seq": 6}, acks
    [*_, last] = await listener.wait_for("move", 6)
    assert [m["seq"] for m in listener.events["move"]] == [1, 2, 3, 4, 5, 6]
    assert last["action"] == {"after": True}


async def test_an_instance_late_back_from_an_outage_is_not_reaped(process_factory, players, own_redis) -> None:
    """After a Redis outage every heartbeat key has expired. An instance that is slow to beat
    again (here: stopped while Redis comes back) is given one ``heartbeat_ttl_s`` from when a
    survivor first sees it missing, so its live players do not become drops (commit f31e9e2).
    Kills the mutant that reaps as soon as the heartbeat is seen missing."""
    env = {"GAMEGW_REDIS_URL": own_redis.url, "GAMEGW_REDIS_TIMEOUT_S": "0.5", "GAMEGW_GRACE_S": "30",
           "GAMEGW_HEARTBEAT_INTERVAL_S": "0.2", "GAMEGW_HEARTBEAT_TTL_S": "3"}
    a = await process_factory("inst-a", **env)
    b = await process_factory("inst-b", **env)
    on_a = await players(a.url, token("on-a"))
    on_b = await players(b.url, token("on-b"))
    for player in (on_a, on_b):
        assert (await player.call("join", {"room": "r"}))["ok"] is True

    own_redis.stop()  # its data is kept, but every heartbeat key expires while it is down
    await asyncio.sleep(3.5)
    a.kill(signal.SIGSTOP)
    try:
        own_redis.start()
        await eventually(lambda: _ready(b.url), timeout=15)
        await asyncio.sleep(0.5)  # b's reaper sees a missing: the mutant reaps it now
    finally:
        a.kill(signal.SIGCONT)
    await eventually(lambda: _ready(a.url, b.url), timeout=15)
    await asyncio.sleep(3.5)  # past a's bound, had it never come back

    check_registry(await registry(b.url), {"on-a", "on-b"}, {"connected"})
    assert on_b.events["player_disconnected"] == []
    ack = await on_a.call("move", {"room": "r", "action": {}})
    assert ack["ok"] is True, ack  # a full run once saw it fail, with no code to tell why
