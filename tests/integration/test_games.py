"""Game plugins (issue 18): a game installed from a package of its own, played over two
instances; a ticking game whose ticks survive the death of the instance that ticks its room.

The example package (examples/games) is pip-installed into the running environment once for
this module, from a copy (a build writes into the source folder), and uninstalled afterwards.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import itertools
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from gamegw import games
from gamegw.games import Game, State
from gamegw.server.app import PARTS
from gamegw.server.auth.tokens import mint
from gamegw.server.config import load_settings
from gamegw.server.protocol.errors import ConfigError
from gamegw.server.rules import GameRules
from gamegw.server.state.keys import Keys
from gamegw.server.state.rooms_redis import RedisRoomStore
from tests.conftest import TEST_SECRET, eventually, make_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "games"
DIST = "gamegw-example-games"
LEASE_S = 1.0


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   capture_output=True, timeout=300)


def _can_build_wheels() -> bool:
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = (int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1)  # bdist_wheel moved into setuptools


@pytest.fixture(scope="module")
def example_games(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``pip install`` of examples/games into this environment (the gateways it starts, in
    process or not, find its games through their entry points)."""
    src = tmp_path_factory.mktemp("example-games") / "games"
    shutil.copytree(EXAMPLE, src)
    # With setuptools able to build a wheel at hand, the build needs no index; otherwise pip
    # fetches setuptools for an isolated build.
    isolation = ["--no-build-isolation"] if _can_build_wheels() else []
    _pip("install", "--no-deps", *isolation, str(src))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        _pip("uninstall", "-y", DIST)
        importlib.invalidate_caches()


def _token(user: str) -> str:
    return mint(make_settings(), user)


def _error(ack: dict[str, Any]) -> tuple[bool, str]:
    return ack["ok"], ack["error"]["code"]


def test_the_shipped_games_are_plugins_and_an_unknown_one_is_a_config_error() -> None:
    assert {"relay", "arena"} <= set(games.installed())
    assert games.installed()["arena"].value == "gamegw.server.rules.arena:Arena"
    with pytest.raises(ConfigError) as raised:
        load_settings({"GAMEGW_JWT_SECRET": TEST_SECRET}, None, {"game": "chess"})
    assert "'chess' is not an installed game" in str(raised.value)
    assert "arena" in str(raised.value) and "relay" in str(raised.value)
    with pytest.raises(ConfigError, match="tick_lease_s"):
        load_settings({"GAMEGW_JWT_SECRET": TEST_SECRET}, None, {"tick_lease_s": 0})


async def test_an_installed_game_plays_over_two_instances(example_games, process_factory, players):
    a = await process_factory("games-a", GAMEGW_GAME="tictactoe")
    b = await process_factory("games-b", GAMEGW_GAME="tictactoe")
    alice = await players(a.url, _token("alice"))
    bob = await players(b.url, _token("bob"))
    carol = await players(a.url, _token("carol"))
    assert (await alice.call("join", {"room": "t"}))["ok"]
    assert (await bob.call("join", {"room": "t"}))["ok"]
    # the game refuses a third player: illegal_move on join, and carol holds no seat
    refused = await carol.call("join", {"room": "t"})
    assert refused == {"ok": False, "error": {"code": "illegal_move", "message": "the game has its two players"}}
    assert sorted((await alice.call("join", {"room": "t"}))["members"]) == ["alice", "bob"]

    assert await alice.call("move", {"room": "t", "action": {"cell": 4}}) == {"ok": True, "seq": 1}
    assert _error(await alice.call("move", {"room": "t", "action": {"cell": 0}})) == (False, "illegal_move")
    taken = await bob.call("move", {"room": "t", "action": {"cell": 4}})
    assert taken["error"] == {"code": "illegal_move", "message": "cell 4 is taken"}
    assert _error(await bob.call("move", {"room": "t", "action": {"cell": 9}})) == (False, "illegal_move")
    for player, cell in ((bob, 0), (alice, 2), (bob, 1), (alice, 6)):
        assert (await player.call("move", {"room": "t", "action": {"cell": cell}}))["ok"]
    # every legal move reached both players, with the action the game broadcast
    for player in (alice, bob):
        moves = await player.wait_for("move", 5)
        assert [(m["seq"], m["user"], m["action"]) for m in moves] == [
            (1, "alice", {"cell": 4, "mark": "x"}), (2, "bob", {"cell": 0, "mark": "o"}),
            (3, "alice", {"cell": 2, "mark": "x"}), (4, "bob", {"cell": 1, "mark": "o"}),
            (5, "alice", {"cell": 6, "mark": "x", "winner": "x"})]
    state = await bob.call("state", {"room": "t"})
    assert state == {"ok": True, "seq": 5, "state": {
        "players": ["alice", "bob"], "board": ["o", "o", "x", "", "x", "", "x", "", ""], "turn": "o",
        "winner": "x"}}
    over = await bob.call("move", {"room": "t", "action": {"cell": 3}})
    assert over["error"] == {"code": "illegal_move", "message": "the game is over"}
    assert (await alice.call("state", {"room": "t"}))["seq"] == 5


async def test_a_ticking_game_ticks_in_memory_mode(example_games, gateway_factory, players):
    gw = await gateway_factory(game="pulse")
    alice = await players(gw.url, gw.token("alice"))
    assert (await alice.call("join", {"room": "p"}))["ok"]
    moves = await alice.wait_for("move", 10, timeout=5)  # their cadence: tests/unit/test_ticker.py
    assert [(m["seq"], m["user"], m["action"]) for m in moves[:10]] == [(n, "", {"beat": n}) for n in range(1, 11)]
    refused = await alice.call("move", {"room": "p", "action": {"x": 1}})
    assert refused["error"]["code"] == "illegal_move"
    assert gw.app[PARTS].ticker is not None and gw.app[PARTS].ticker.held == ["p"]
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    ticked = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("gamegw_ticked_moves_total"))
    assert ticked >= 10 and "gamegw_tick_leases 1.0" in text


async def test_ticks_survive_the_death_of_the_ticking_instance(example_games, process_factory, players,
                                                               redis_server, redis_prefix):
    env = {"GAMEGW_GAME": "pulse", "GAMEGW_TICK_LEASE_S": str(LEASE_S)}
    a = await process_factory("pulse-a", **env)
    b = await process_factory("pulse-b", **env)
    alice = await players(a.url, _token("alice"))
    bob = await players(b.url, _token("bob"))
    arrivals: dict[str, list[float]] = {"alice": [], "bob": []}
    # when each move arrives, besides what the fixture's catch-all records
    for name, player in (("alice", alice), ("bob", bob)):
        def record(data: Any, n: str = name, p: Any = player) -> None:
            arrivals[n].append(time.monotonic())
            p.events["move"].append(data)
            p.arrived.set()
        player.client.on("move", record, namespace="/game")
    assert (await alice.call("join", {"room": "p"}))["ok"]
    assert (await bob.call("join", {"room": "p"}))["ok"]
    await bob.wait_for("move", 10, timeout=5)

    lease_key = f"{redis_prefix}:room:{{p}}:tick"
    r = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        holder = r.get(lease_key)
        assert holder in ("pulse-a", "pulse-b")
        doomed, survivor = (a, bob) if holder == "pulse-a" else (b, alice)
        watcher = "bob" if survivor is bob else "alice"
        before = len(survivor.events["move"])
        killed = time.monotonic()
        doomed.kill(signal.SIGKILL)
        # the survivor takes the lease once it lapses, and ticks on
        await survivor.wait_for("move", before + 30, timeout=10)
        assert r.get(lease_key) == ("pulse-b" if holder == "pulse-a" else "pulse-a")
    finally:
        r.close()

    moves = survivor.events["move"]
    seqs = [m["seq"] for m in moves]
    first = seqs[0]
    assert seqs == list(range(first, first + len(seqs)))  # no gap, no repeat, across the takeover
    assert all(m["user"] == "" and m["action"] == {"beat": m["seq"]} for m in moves)
    # the pause: at most the lease's TTL, one pass and a tick (plus slack for a loaded machine)
    times = arrivals[watcher]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times) if t2 >= killed]
    assert max(gaps) < LEASE_S + 0.1 + 0.1 + 1.0
    # the ticked moves are in the room's log: sync (and a resume's replay) hand them out again
    synced = await survivor.call("sync", {"room": "p", "after_seq": first - 1})
    assert synced["complete"] and [e["seq"] for e in synced["events"]][:len(seqs)] == seqs


async def test_ticked_moves_are_replayed_on_resume(example_games, cluster_factory, players):
    gw1, gw2 = await cluster_factory(2, game="pulse", tick_lease_s=LEASE_S, grace_s=10)
    alice = await players(gw1.url, gw1.token("alice"))
    bob = await players(gw2.url, gw2.token("bob"))
    assert (await alice.call("join", {"room": "p"}))["ok"]
    assert (await bob.call("join", {"room": "p"}))["ok"]
    seen = (await bob.wait_for("move", 3))[-1]["seq"]
    assert (await drop(gw2, "bob"))["count"] == 1
    await eventually(lambda: _gone(bob))
    ticked = (await alice.wait_for("move", len(alice.events["move"]) + 5))[-1]["seq"]
    back = await players(gw1.url, gw1.token("bob"), auth={"token": gw1.token("bob"), "last_seq": {"p": seen}})
    moves = await back.wait_for("move", ticked - seen + 3)
    seqs = [m["seq"] for m in moves]
    # the beats bob missed (replayed from the log), then the live ones: one run, no gap, no repeat
    assert seqs == list(range(seen + 1, seen + 1 + len(seqs)))
    assert all(m["user"] == "" and m["action"] == {"beat": m["seq"]} for m in moves)


async def _gone(player: Any) -> bool:
    return not player.client.connected


async def drop(gw: Any, user: str) -> dict[str, Any]:
    token = gw.token("ops", role="admin")
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/admin/drop", json={"user": user}, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


class Counter(Game):
    name = "counter"
    tick_s = 0.05

    def initial_state(self) -> State:
        return {"n": 0}

    def tick(self, state: State, now: float) -> list[dict[str, Any]]:
        state["n"] += 1
        return [{"n": state["n"]}]


async def test_only_the_lease_holder_ticks_a_room(redis_server, redis_prefix):
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(redis_prefix)
    one = RedisRoomStore(client, keys, GameRules(Counter()), instance_id="one")
    two = RedisRoomStore(client, keys, GameRules(Counter()), instance_id="two")
    try:
        await one.join("r", "alice", "s1")
        await two.join("r", "bob", "s2")
        assert await one.claim_tick("r", 1000)
        assert not await two.claim_tick("r", 1000)  # held: the other may not take it
        assert await one.claim_tick("r", 1000)  # renewed by its holder
        # the fence: a tick by an instance that does not hold the lease writes nothing
        assert await two.tick("r", 0.0, 0) == []
        [event] = await one.tick("r", 0.0, 0)
        assert (event.seq, event.wire()["user"], event.wire()["action"]) == (1, "", {"n": 1})
        assert await one.state("r") == (1, {"n": 1})
        # given up: the other takes it at once, and ticks on from the same state and seq
        await one.release_tick("r")
        assert await two.claim_tick("r", 1000)
        assert [e.seq for e in await two.tick("r", 0.0, 0)] == [2]
        assert await one.tick("r", 0.0, 0) == []
        # a lease that is not renewed lapses: then anyone with members may take it
        assert await two.claim_tick("r", 50)
        await asyncio.sleep(0.1)
        assert await one.claim_tick("r", 1000)
        events, complete = await one.events_after("r", 0)
        assert complete and [e.seq for e in events] == [1, 2]
        # a room that is gone ticks no more, even for the lease's holder
        await one.leave("r", "alice", "s1")
        await two.leave("r", "bob", "s2")
        assert await one.tick("r", 0.0, 0) == []
    finally:
        await one.aclose()
        await two.aclose()
        await client.aclose()
