"""One reader for all of a process's load-test connections.

A greenlet per connection, each blocked in ``recv``, cost a trip through gevent's hub (its
watcher callback, a switch into the greenlet, a switch back) for every frame a player received:
at ten broadcasts a second per player, that was most of a Locust worker's CPU. Here one
greenlet waits on one ``epoll`` holding every connection's socket, and each wake-up reads all the
sockets that are ready, in one pass, with the sockets' own non-blocking ``recv``. The clock is
read once per pass (``now``, and ``second`` = ``int(now)``) and handed to each connection: what
it receives in that pass arrived at that moment, to within the pass.

gevent's monkey-patching hides ``select.epoll`` (Locust patches everything), so the original is
taken from :mod:`gevent.monkey`.
"""

from __future__ import annotations

import time
from typing import Protocol

import gevent
from gevent.hub import get_hub
from gevent.monkey import get_original

_epoll = get_original("select", "epoll")
_EPOLLIN = 0x001


class Readable(Protocol):
    def readable(self, now: float, second: int) -> None: ...


class Reactor:
    """The epoll and its reader greenlet (started with the first connection)."""

    def __init__(self) -> None:
        self.epoll = _epoll()
        self.conns: dict[int, Readable] = {}
        self.greenlet: gevent.Greenlet | None = None

    def add(self, fd: int, conn: Readable) -> None:
        self.conns[fd] = conn
        self.epoll.register(fd, _EPOLLIN)
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)

    def remove(self, fd: int) -> None:
        if self.conns.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:  # already closed: the kernel dropped it from the set
                pass

    def _run(self) -> None:
        hub = get_hub()
        watcher = hub.loop.io(self.epoll.fileno(), 1)
        poll, conns = self.epoll.poll, self.conns
        clock = time.time
        while True:
            hub.wait(watcher)
            ready = poll(0)
            now = clock()
            second = int(now)
            for fd, _ in ready:
                conn = conns.get(fd)
                if conn is not None:
                    conn.readable(now, second)


_reactor: Reactor | None = None


def reactor() -> Reactor:
    """This process's reactor (one per process: Locust runs one event loop)."""
    global _reactor
    if _reactor is None:
        _reactor = Reactor()
    return _reactor
