"""Token expiry on live connections.

A connection lives as long as its token: ``token_expiring`` is sent ``token_expiring_s`` before
``exp``, a ``refresh`` with a fresh token for the same user moves both deadlines, and once
``exp`` plus the leeway passes without one the connection is closed with ``4005 token_expired``
(a code under 4500: the client reconnects with a fresh token and, within grace, resumes).

Every connection's two deadlines wait in one heap under one timer of the event loop, not two
timers per connection (a TimerHandle and its arguments held ~1.3 KB for the connection's whole
life). A refresh or a disconnect leaves the old deadlines in the heap, to be skipped when they
come up; once those outnumber the live ones the heap is rebuilt without them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

Action = Callable[[str, float], Coroutine[Any, Any, Any]]
WARN, EXPIRE = 0, 1
REBUILD_MIN = 1024  # stale deadlines tolerated before the heap is rebuilt, however few are live


class TokenClock:
    def __init__(self, *, warn_s: float, leeway_s: float, clock: Callable[[], float],
                 on_warn: Action, on_expire: Action) -> None:
        self._warn_s = warn_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._actions = (on_warn, on_expire)
        self._armed: dict[str, tuple[float, int]] = {}  # sid -> (exp, the arming's number)
        # (loop time due, the arming's number, WARN or EXPIRE, sid, exp); the arming's number
        # tells a live deadline from one a refresh or a disarm left behind
        self._heap: list[tuple[float, int, int, str, float]] = []
        self._numbers = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def arm(self, sid: str, exp: float) -> None:
        """(Re)start a connection's deadlines for a token that expires at ``exp`` (epoch seconds)."""
        self.disarm(sid)
        loop = asyncio.get_running_loop()
        now, at = self._clock(), loop.time()
        number = next(self._numbers)
        self._armed[sid] = (exp, number)
        heapq.heappush(self._heap, (at + max(0.0, exp - self._warn_s - now), number, WARN, sid, exp))
        heapq.heappush(self._heap, (at + max(0.0, exp + self._leeway_s - now), number, EXPIRE, sid, exp))
        self._wake_at(self._heap[0][0])

    def armed_for(self, sid: str) -> float | None:
        """The ``exp`` a connection's deadlines run to, or None once disarmed."""
        armed = self._armed.get(sid)
        return armed[0] if armed is not None else None

    @property
    def deadlines(self) -> int:
        """Deadlines in the heap, the stale ones included (what it holds)."""
        return len(self._heap)

    def disarm(self, sid: str) -> None:
        self._armed.pop(sid, None)
        # the live deadlines are two per connection at most: past that, the heap is rebuilt
        # once the stale ones are more than REBUILD_MIN and than twice the live ones
        if len(self._heap) > 2 * REBUILD_MIN + 4 * len(self._armed):
            self._heap = [d for d in self._heap if self._live(d)]
            heapq.heapify(self._heap)

    def _live(self, deadline: tuple[float, int, int, str, float]) -> bool:
        armed = self._armed.get(deadline[3])
        return armed is not None and armed[1] == deadline[1]

    def _wake_at(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._due)

    def _due(self) -> None:
        """Run every live deadline that has come; wake again for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now, heap = loop.time(), self._heap
        while heap and heap[0][0] <= now:
            deadline = heapq.heappop(heap)
            _, _, kind, sid, exp = deadline
            if not self._live(deadline):
                continue
            if kind == EXPIRE:
                del self._armed[sid]
            task = loop.create_task(self._actions[kind](sid, exp))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if heap:
            self._wake_at(heap[0][0])

    def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed.clear()
        self._heap.clear()
