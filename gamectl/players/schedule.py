"""One timer for all of a process's players.

Locust runs each user in a greenlet of its own that sleeps between tasks: every move of every
player cost a gevent timer, two greenlet switches and Locust's task machinery (choosing the
task, its state checks, ``wait_time``), about a fifth of a worker's CPU once the sockets were
read by one reactor. Here a heap holds what is due and the reactor's greenlet (:mod:`.reactor`),
which wakes up for readable sockets anyway, also wakes up for the earliest entry and calls every
entry that is due: a player's move is a function call, with no greenlet of its own and no switch.
Entries are never removed; an entry whose owner has moved on (its ``token`` no longer current)
returns at once.

An entry runs at its time or up to ``QUANTUM_S`` later: the reactor wakes up for the schedule at
most ``1 / QUANTUM_S`` times a second, however many players there are. (A separate greenlet
waiting on a gevent ``Event`` for each entry cost as much as the moves themselves.)
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
QUANTUM_S = 0.005
Due = Callable[[int], None]  # called with the token it was scheduled with


class Schedule:
    """A heap of ``(due, n, fn, token)``; ``due`` is ``time.monotonic()`` time."""

    __slots__ = ("_count", "_heap", "on_earlier")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Due, int]] = []
        self._count = itertools.count()
        self.on_earlier: Callable[[float], None] | None = None  # the reactor: "wake up by then"

    def at(self, due: float, fn: Due, token: int) -> None:
        """Call ``fn(token)`` at ``due`` (monotonic seconds), or up to ``QUANTUM_S`` later."""
        heap = self._heap
        if (not heap or due < heap[0][0]) and self.on_earlier is not None:
            self.on_earlier(due)
        heapq.heappush(heap, (due, next(self._count), fn, token))

    def __len__(self) -> int:
        return len(self._heap)

    def run_due(self, now: float) -> float | None:
        """Call every entry due by ``now``; returns when the next one is due (None: nothing held)."""
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= now:
            _, _, fn, token = pop(heap)
            try:
                fn(token)
            except Exception:  # one entry's fault must not stop everyone's clock
                log.exception("scheduled call failed")
        return heap[0][0] if heap else None
