"""The ticker's cadence (server/ticks.py) on a fast-forwarded event loop (looptime): ticks land on
their exact loop times, so the rate is asserted exactly and nothing waits for real."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from gamegw.games import Game, State
from gamegw.server.metrics import Metrics
from gamegw.server.rules import GameRules
from gamegw.server.state.rooms import MemoryRoomStore, MoveEvent
from gamegw.server.ticks import Ticker

pytestmark = pytest.mark.looptime(start=0)


class Beat(Game):
    name = "beat"
    tick_s = 0.1

    def initial_state(self) -> State:
        return {"beat": 0}

    def apply(self, state: State, user: str, action: dict[str, Any]) -> dict[str, Any]:
        return action

    def tick(self, state: State, now: float) -> list[dict[str, Any]]:
        state["beat"] += 1
        return [{"beat": state["beat"]}]


class Heard:
    """The bus: when (loop time) each ticked move was published."""

    def __init__(self) -> None:
        self.moves: list[tuple[float, int]] = []

    async def publish_move(self, room: str, event: MoveEvent) -> None:
        self.moves.append((round(asyncio.get_running_loop().time(), 6), event.seq))


async def ticking(rooms: MemoryRoomStore, heard: Heard, lease_s: float = 3) -> Ticker:
    ticker = Ticker(GameRules(Beat()), rooms, heard, Metrics(), instance_id="i1", lease_s=lease_s)  # type: ignore[arg-type]
    await ticker.start()
    return ticker


async def test_ten_beats_a_second_on_the_dot() -> None:
    rooms, heard = MemoryRoomStore(GameRules(Beat())), Heard()
    await rooms.join("r", "alice", "s1")
    ticker = await ticking(rooms, heard)
    await asyncio.sleep(1.05)
    await ticker.aclose()
    assert heard.moves == [(round(n * 0.1, 6), n + 1) for n in range(11)]


async def test_after_a_stall_one_tick_catches_up_and_the_rest_are_skipped() -> None:
    rooms, heard = MemoryRoomStore(GameRules(Beat())), Heard()
    await rooms.join("r", "alice", "s1")
    tick = rooms.tick

    async def slow_once(room: str, now: float, ts: int) -> list[MoveEvent]:
        if not heard.moves or heard.moves[-1][1] != 3:
            return await tick(room, now, ts)
        await asyncio.sleep(0.25)  # the store stalls once, after the third beat
        return await tick(room, now, ts)

    rooms.tick = slow_once  # type: ignore[method-assign]
    ticker = await ticking(rooms, heard)
    await asyncio.sleep(0.75)
    await ticker.aclose()
    # beat 4 was due at 0.3 and came at 0.55 (the store's stall); beat 5, due at 0.4, catches up
    # at once; the ones due during the stall (0.5) are skipped, and the beat goes on a period later
    assert heard.moves == [(0.0, 1), (0.1, 2), (0.2, 3), (0.55, 4), (0.55, 5), (0.65, 6)]


async def test_passes_faster_than_ticks_do_not_make_up_a_stall_in_a_burst() -> None:
    """A short lease makes passes twice as frequent as ticks (lease 0.15 s: a pass every 0.05 s)."""
    rooms, heard = MemoryRoomStore(GameRules(Beat())), Heard()
    await rooms.join("r", "alice", "s1")
    tick = rooms.tick

    async def stall_once(room: str, now: float, ts: int) -> list[MoveEvent]:
        if heard.moves and heard.moves[-1][1] == 2:
            await asyncio.sleep(0.5)  # the third beat's store call stalls half a second
        return await tick(room, now, ts)

    rooms.tick = stall_once  # type: ignore[method-assign]
    ticker = await ticking(rooms, heard, lease_s=0.15)
    await asyncio.sleep(1.2)
    await ticker.aclose()
    times = [t for t, _ in heard.moves]
    assert [seq for _, seq in heard.moves] == list(range(1, len(times) + 1))
    assert times[:3] == [0.0, 0.1, 0.7]  # beat 3 was due at 0.2
    # after one catch-up, never two beats closer than a period
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times[3:])]
    assert gaps and min(gaps) >= 0.1, heard.moves


async def test_a_room_with_no_member_here_stops_ticking() -> None:
    rooms, heard = MemoryRoomStore(GameRules(Beat())), Heard()
    await rooms.join("r", "alice", "s1")
    ticker = await ticking(rooms, heard)
    await asyncio.sleep(0.25)
    await rooms.leave("r", "alice", "s1")
    await asyncio.sleep(1)
    await ticker.aclose()
    assert heard.moves == [(0.0, 1), (0.1, 2), (0.2, 3)] and ticker.held == []
