"""Issue 12, finding 10: a mass drop must cost no move and leave nothing behind.

80 players in rooms of 10 on two ``gamectl serve`` processes over one redis-server (each room
spans both), each moving about three times a second and recording the ``seq`` of every ``move``
of its room. Three times, every connection is cut at the same moment (the client sockets are
aborted: no close frame, no DISCONNECT, as in a network fault) and every player reconnects at
once with ``auth.last_seq``, half of them to the other instance, and plays on. Then:

* every reconnect resumed (``session.resumed`` true, the room back);
* every player received its room's moves ``1 .. seq`` exactly once each, in order, across the
  three drops (no repeat, no gap; the missed moves come as the replay after ``session``);
* no move was refused;
* once everyone has left (the client's own disconnect) and grace has passed, Redis holds no
  ``conn``, ``sess``, ``usess``, ``user``, ``grace``, ``seen``, ``inst:*:sids`` or ``room`` entry.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as redis_async

from gamegw.server.auth.tokens import mint
from gamegw.server.state.keys import Keys
from tests.conftest import GatewayProcess, RedisServer, make_settings
from tests.invariants import check_leftovers, settled
from tests.leanclient import LeanClient

pytestmark = pytest.mark.timeout(120)

PLAYERS = 80
ROOM_SIZE = 10
MOVE_EVERY_S = 0.3
PLAY_S = 3.0
DROPS = 3
GRACE_S = 10.0
SWEEP_S = 0.1
ENV = {
    "GAMEGW_GRACE_S": str(GRACE_S),
    "GAMEGW_GRACE_SWEEP_INTERVAL_S": str(SWEEP_S),
    "GAMEGW_MAX_CONNECTS_PER_ADDRESS_PER_S": "100000",
    "GAMEGW_MAX_CONNECTS_PER_ADDRESS_BURST": "100000",
}

Processes = Callable[..., Awaitable[GatewayProcess]]


def token(user: str) -> str:
    return mint(make_settings(), user)


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@dataclass
class Player:
    """One user in one room across its connections: what it received, sent and was told."""

    user: str
    room: str
    client: LeanClient | None = None
    received: list[int] = field(default_factory=list)  # seqs of the room's move events, in arrival order
    drops_at: list[int] = field(default_factory=list)  # len(received) at each drop
    resumes: list[str] = field(default_factory=list)  # what went wrong with a reconnect
    errors: Counter[str] = field(default_factory=Counter)  # error acks by code
    moved: int = 0

    def harvest(self) -> None:
        """Move what the current connection recorded into the player's history."""
        if self.client is not None:
            moves = self.client.events.pop("move", [])
            self.received.extend(m["seq"] for m in moves if m["room"] == self.room)

    def seen(self) -> int:
        pending = self.client.events.get("move", []) if self.client is not None else []
        return pending[-1]["seq"] if pending else (self.received[-1] if self.received else 0)

    async def connect(self, url: str, *, resume: bool) -> None:
        auth: dict[str, Any] = {"token": token(self.user)}
        if resume:
            auth["last_seq"] = {self.room: self.received[-1] if self.received else 0}
        self.client = client = await LeanClient.connect(url, auth)
        if not resume:
            assert client.session is not None, (self.user, client.connect_error)
            ack = await client.call("join", {"room": self.room})
            assert ack is not None and ack["ok"], (self.user, ack)
            return
        session = client.session
        if session is None or not session["resumed"] or session["rooms"] != [self.room]:
            self.resumes.append(f"drop {len(self.drops_at)}: session {session}, connect_error {client.connect_error}")

    async def play(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(random.uniform(0, MOVE_EVERY_S))
        while not stop.is_set():
            client = self.client
            if client is None or not client.connected:
                await asyncio.sleep(0.02)
                continue
            self.moved += 1
            ack = await client.call("move", {"room": self.room, "action": {"n": self.moved}})
            if ack is not None and not ack.get("ok"):
                self.errors[ack["error"]["code"]] += 1
            await asyncio.sleep(MOVE_EVERY_S * random.uniform(0.8, 1.2))


def gaps_and_repeats(p: Player, final: int) -> str:
    """What is wrong with a player's seqs, located relative to the drops."""
    counts = Counter(p.received)
    repeats = sorted(s for s, n in counts.items() if n > 1)
    missing = sorted(set(range(1, final + 1)) - set(counts))
    jumps = [f"{a}->{b}" for a, b in itertools.pairwise(p.received) if b != a + 1][:6]
    at_drops = [p.received[i - 1] if i else 0 for i in p.drops_at]
    return (f"{p.user} in {p.room}: received {len(p.received)} moves for seqs 1..{final}; "
            f"repeated {repeats[:10]}, missing {missing[:10]}, jumps {jumps}; "
            f"last seq seen before each drop {at_drops}")


async def test_mass_drops_lose_no_move_and_leave_no_key(process_factory: Processes, redis_client: Any,
                                                       redis_prefix: str, figure) -> None:
    gateways = [await process_factory("drop-a", **ENV), await process_factory("drop-b", **ENV)]
    urls = [g.url for g in gateways]
    players = [Player(f"p{i}", f"room-{i // ROOM_SIZE}") for i in range(PLAYERS)]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    try:
        await asyncio.gather(*(p.connect(urls[i % 2], resume=False) for i, p in enumerate(players)))
        tasks = [asyncio.create_task(p.play(stop)) for p in players]
        await asyncio.sleep(PLAY_S)
        for d in range(1, DROPS + 1):
            for p in players:  # every connection cut in the same turn of the event loop
                assert p.client is not None
                p.client.abort()
            for p in players:
                p.harvest()
                p.drops_at.append(len(p.received))
                assert p.client is not None
                await p.client.aclose()
            # at once, half of the players to the other instance
            await asyncio.gather(*(p.connect(urls[(i + (d if i % 4 < 2 else 0)) % 2], resume=True)
                                   for i, p in enumerate(players)))
            await asyncio.sleep(PLAY_S)
        stop.set()
        await asyncio.gather(*tasks)
        finals = {p.room: int(await redis_client.get(Keys(redis_prefix).room(p.room, "seq")) or 0) for p in players}

        async def undelivered() -> list[str]:
            return [p.user for p in players if p.seen() < finals[p.room]]

        await settled(undelivered, timeout=5)  # the last broadcasts
        for p in players:
            p.harvest()
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.client.disconnect() for p in players if p.client is not None))
    played = time.monotonic() - started

    problems: list[str] = []
    resumes = [f"{p.user}: {r}" for p in players for r in p.resumes]
    if resumes:
        problems.append(f"{len(resumes)} reconnects did not resume:\n    " + "\n    ".join(resumes[:20]))
    broken = [gaps_and_repeats(p, finals[p.room]) for p in players if p.received != list(range(1, finals[p.room] + 1))]
    if broken:
        problems.append(f"{len(broken)} of {PLAYERS} players saw a gap or a repeat across {DROPS} mass drops:\n    "
                        + "\n    ".join(broken[:20]))
    errors = sum((p.errors for p in players), Counter[str]())
    if errors:
        problems.append(f"moves refused: {dict(errors)}")

    keys = Keys(redis_prefix)
    left = await settled(lambda: check_leftovers(redis_client, keys), timeout=GRACE_S + SWEEP_S + 3)
    if left:
        problems.append(f"{len(left)} entries left in Redis after everyone left and grace passed:\n    "
                        + "\n    ".join(left[:30]))
    if problems:
        pytest.fail("\n  ".join(["", *problems]), pytrace=False)
    figure(f"{PLAYERS} players, {DROPS} mass drops, {sum(finals.values())} moves: played {played:.1f} s")
