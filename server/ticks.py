"""Ticks: a ticking game's rooms advance by themselves, on exactly one instance at a time.

Each instance runs one loop. For every room with members connected here it claims the room's
tick lease (``{p}:room:{{r}}:tick``, a Redis string holding the instance id, set with a TTL of
``tick_lease_s``) or renews it if it is already its own, and ticks the room when its next tick
is due. The lease is renewed at least three times per TTL, so a live holder keeps it; when the
holder dies it lapses within ``tick_lease_s``, and any other instance with members in the room
takes it at its next pass. The pause that players on a survivor see is therefore at most
``tick_lease_s`` + one pass (``min(tick_s, tick_lease_s / 3)``) + the tick itself.

The lease is also a fence: the tick's Lua script writes only while the lease names this
instance, so an instance that stalled past its lease cannot tick a room a second time.
Ticked actions are moves of the user ``""`` with the room's next seq (logged, replayed).

In memory mode the single instance ticks every room, and no lease is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from .cluster.bus import Bus
from .logs import log, stop_task
from .metrics import Metrics
from .protocol.errors import ActionError
from .rules import Rules
from .state.rooms import RoomStore

logger = logging.getLogger("gamegw.ticks")
STORE_ERRORS = (RedisError, OSError, TimeoutError, ActionError)


def _ignore(room: str, seq: int) -> None:
    return None


class Ticker:
    def __init__(self, rules: Rules, rooms: RoomStore, bus: Bus, metrics: Metrics, *, instance_id: str,
                 lease_s: float, clock: Callable[[], float] = time.time,
                 on_move: Callable[[str, int], None] = _ignore) -> None:
        self._metrics = metrics
        metrics.tick_leases.set_function(lambda: len(self._due))
        self._rules = rules
        self._rooms = rooms
        self._bus = bus
        self._instance_id = instance_id
        self.tick_s = rules.tick_s
        self.lease_ms = max(1, int(lease_s * 1000))
        # how often the loop runs: every tick, and often enough to renew the lease in time
        self.pass_s = min(self.tick_s, lease_s / 3) if self.tick_s > 0 else 0.0
        self._clock = clock
        self.on_move = on_move
        self._due: dict[str, float] = {}  # room whose lease we hold -> when its next tick is due (monotonic)
        self._task: asyncio.Task[None] | None = None
        self._failed_logged = 0.0

    @property
    def held(self) -> list[str]:
        """The rooms this instance ticks now (as of its last pass)."""
        return sorted(self._due)

    async def start(self) -> None:
        if self.tick_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()  # its clock is monotonic (and a test's to fast-forward)
        next_pass = loop.time()
        while True:
            try:
                await self.step()
            except STORE_ERRORS as exc:  # Redis is away: no tick anywhere until it is back
                self._trouble(exc)
            next_pass += self.pass_s
            now = loop.time()
            if next_pass < now:  # a pass that took too long: keep the cadence, skip what was missed
                next_pass = now
            await asyncio.sleep(next_pass - now)

    async def step(self) -> None:
        """One pass: claim or renew the lease of each local room, tick those that are due."""
        local = self._rooms.local_rooms()
        here = set(local)
        for room in [r for r in self._due if r not in here]:  # no member here any more
            del self._due[room]
            await self._rooms.release_tick(room)
        for room in local:
            if not await self._rooms.claim_tick(room, self.lease_ms):
                if self._due.pop(room, None) is not None:
                    log(logger, "tick_lease_lost", room=room, instance=self._instance_id)
                continue
            mono = asyncio.get_running_loop().time()
            due = self._due.get(room)
            if due is None:
                log(logger, "tick_lease", room=room, instance=self._instance_id)
                due = mono
            # half a pass early is on time: a pass that woke a hair before the tick was due
            # would otherwise put it off a whole pass, and the rate would sag
            if mono < due - self.pass_s / 2:
                self._due[room] = due
                continue
            now = self._clock()
            try:
                events = await self._rooms.tick(room, now, int(now * 1000))
            except STORE_ERRORS:
                raise
            except Exception:  # a bug in the game: this room's tick is skipped, the others go on
                logger.exception("tick failed", extra={"gamegw_fields": {"room": room}})
                events = []
            for event in events:
                await self._bus.publish_move(room, event)
                self.on_move(room, event.seq)
            self._metrics.ticked_moves.inc(len(events))
            # the rate holds: the next tick is one period after this one was due, not after it ran
            self._due[room] = due + self.tick_s if due + self.tick_s > mono else mono + self.tick_s

    def _trouble(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._failed_logged >= 1.0:
            self._failed_logged = now
            log(logger, "tick_failed", logging.WARNING, instance=self._instance_id, error=type(exc).__name__,
                detail=str(exc))

    async def aclose(self) -> None:
        """Stop ticking and give the leases up, so that another instance takes over at once."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        for room in list(self._due):
            with contextlib.suppress(*STORE_ERRORS):
                await self._rooms.release_tick(room)
        self._due.clear()
