"""One timer for all of a process's players.

Locust runs each user in a greenlet of its own that sleeps between tasks: every move of every
player cost a gevent timer, two greenlet switches and Locust's task machinery (choosing the
task, its state checks, ``wait_time``), about a fifth of a worker's CPU once the sockets were
read by one reactor. Here one greenlet keeps a heap of what is due, sleeps until the earliest,
and calls each entry in turn: a player's move is a function call. Entries are never removed;
an entry whose owner has moved on (its ``token`` no longer current) returns at once.

Entries due within ``QUANTUM_S`` of each other run in the same pass, so that thousands of
players cost at most ``1 / QUANTUM_S`` wake-ups a second.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)
QUANTUM_S = 0.001
Due = Callable[[int], None]  # called with the token it was scheduled with


class Schedule:
    """A heap of ``(due, n, fn, token)``; ``due`` is ``time.monotonic()`` time."""

    __slots__ = ("_count", "_greenlet", "_heap", "_nudge", "_until")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Due, int]] = []
        self._count = itertools.count()
        self._greenlet: gevent.Greenlet | None = None
        self._nudge = Event()
        self._until = float("inf")  # when the greenlet wakes up next

    def at(self, due: float, fn: Due, token: int) -> None:
        """Call ``fn(token)`` at ``due`` (monotonic seconds), or soon after."""
        heapq.heappush(self._heap, (due, next(self._count), fn, token))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        elif due < self._until - QUANTUM_S:
            self._nudge.set()  # earlier than the greenlet meant to wake up

    def __len__(self) -> int:
        return len(self._heap)

    def _run(self) -> None:
        heap, pop, clock, nudge = self._heap, heapq.heappop, time.monotonic, self._nudge
        while True:
            now = clock()
            horizon = now + QUANTUM_S
            while heap and heap[0][0] <= horizon:
                _, _, fn, token = pop(heap)
                try:
                    fn(token)
                except Exception:  # one entry's fault must not stop everyone's clock
                    log.exception("scheduled call failed")
            self._until = heap[0][0] if heap else float("inf")
            nudge.clear()
            nudge.wait(None if not heap else max(0.0, self._until - clock()))
            self._until = 0.0


_schedule: Schedule | None = None


def schedule() -> Schedule:
    """This process's schedule (one per process, as the reactor)."""
    global _schedule
    if _schedule is None:
        _schedule = Schedule()
    return _schedule
