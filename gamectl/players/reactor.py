"""One reader for all of a process's load-test connections.

A greenlet per connection, each blocked in ``recv``, cost a trip through gevent's hub (its
watcher callback, a switch into the greenlet, a switch back) for every frame a player received:
at ten broadcasts a second per player, that was most of a Locust worker's CPU. Here one
greenlet waits on one ``epoll`` holding every connection's socket, and each wake-up reads all the
sockets that are ready, in one pass, with the sockets' own non-blocking ``recv``. The clock is
read once per pass (``now``, and ``second`` = ``int(now)``) and handed to each connection: what
it receives in that pass arrived at that moment, to within the pass.

The same greenlet runs the players' schedule (:mod:`.schedule`): it also wakes up when the
earliest entry is due, and after each pass over the sockets calls the entries that are due. It
waits with its own watchers (the epoll's and a timer) calling its ``switch``, started before it
hands over to the hub and stopped when it is back, rather than ``hub.wait``, which makes a waiter
object on every call.

gevent's monkey-patching hides ``select.epoll`` (Locust patches everything), so the original is
taken from :mod:`gevent.monkey`.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import gevent
from gevent.hub import get_hub
from gevent.monkey import get_original
from greenlet import getcurrent

from .schedule import QUANTUM_S, Schedule

_epoll = get_original("select", "epoll")
_EPOLLIN = 0x001


class Readable(Protocol):
    def readable(self, now: float, second: int) -> None: ...


class Reactor:
    """The epoll, the schedule and the greenlet that serves both (started when first needed)."""

    def __init__(self) -> None:
        self.epoll = _epoll()
        self.conns: dict[int, Readable] = {}
        self.schedule = Schedule()
        self.schedule.on_earlier = self._earlier
        self.greenlet: gevent.Greenlet | None = None
        self._waiting: Any = None  # while the greenlet waits: its switch, for a timer to call
        self._timer: Any = None
        self._wake_at = float("inf")

    def add(self, fd: int, conn: Readable) -> None:
        self.conns[fd] = conn
        self.epoll.register(fd, _EPOLLIN)
        self._start()

    def remove(self, fd: int) -> None:
        if self.conns.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:  # already closed: the kernel dropped it from the set
                pass

    def _start(self) -> None:
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)

    def _earlier(self, due: float) -> None:
        """The schedule's earliest entry is now ``due``: wake up by then."""
        self._start()
        if self._waiting is not None:
            self._alarm(due, self._waiting)

    def _alarm(self, due: float, switch: Any) -> None:
        """Ring by ``due`` (within ``QUANTUM_S``). An alarm set for then or earlier stays: it rings
        a pass that finds nothing due at worst, and re-arming a timer on every pass cost 15% of the
        greenlet's time."""
        timer = self._timer
        if timer is not None and timer.active and self._wake_at <= due + QUANTUM_S:
            return
        if timer is not None:
            timer.stop()
        delay = max(QUANTUM_S, due - time.monotonic())
        self._timer = timer = get_hub().loop.timer(delay)
        timer.start(switch)
        self._wake_at = time.monotonic() + delay

    def _run(self) -> None:
        hub = get_hub()
        switch = getcurrent().switch
        watcher = hub.loop.io(self.epoll.fileno(), 1)
        poll, conns, run_due = self.epoll.poll, self.conns, self.schedule.run_due
        clock, monotonic = time.time, time.monotonic
        next_due = run_due(monotonic())
        while True:
            watcher.start(switch)
            if next_due is not None:
                self._alarm(next_due, switch)
            self._waiting = switch
            hub.switch()  # back when a socket is readable or the alarm rings
            self._waiting = None
            watcher.stop()
            ready = poll(0)
            now = clock()
            second = int(now)
            for fd, _ in ready:
                conn = conns.get(fd)
                if conn is not None:
                    conn.readable(now, second)
            next_due = run_due(monotonic())


_reactor: Reactor | None = None


def reactor() -> Reactor:
    """This process's reactor (one per process: Locust runs one event loop)."""
    global _reactor
    if _reactor is None:
        _reactor = Reactor()
    return _reactor
