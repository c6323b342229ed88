"""Sticky routing for ``gamectl serve --workers N``: one listening socket, N worker processes.

An Engine.IO session lives in one process, and a long-polling session is a series of HTTP
requests, each on whichever TCP connection the client has at hand. So the parent owns the
listener and routes each accepted connection, whole, to one worker (what ``@socket.io/sticky``
does for Node), at no cost per byte:

* it peeks at the request line (``recv(MSG_PEEK)``: nothing is consumed, the worker reads the
  request as if it had accepted the connection itself);
* a request whose query carries ``sid=`` goes to the worker that made that sid: a worker's sids
  start with its number (:func:`sid_prefix`, ``w<k>.`` and then the usual random id); any other
  request (a handshake, a websocket-first connection, ``/healthz``) goes round-robin;
* the socket itself is handed to that worker over a Unix socketpair (``SCM_RIGHTS``,
  :func:`socket.send_fds`); the worker serves it (:mod:`.handoff`) and the parent closes its copy.

The route holds for the connection's first request only, so a worker answers every plain HTTP
request with ``Connection: close`` (:mod:`.handoff`): the next request comes on a new connection
and is routed again. A websocket is routed once, at its upgrade request, which carries the sid.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
from collections import deque
from urllib.parse import parse_qs, urlsplit

from ..logs import log

logger = logging.getLogger("gamegw.sticky")

PEEK_BYTES = 8192  # a request line longer than this is routed round-robin (the worker answers it)
_RETRY_S = 0.005  # a request line that came in part: peek again after this long
_SID = re.compile(r"w(\d{1,3})\.")


def sid_prefix(worker: int) -> str:
    """What worker ``worker`` (1..N) puts before each sid it makes; '.' is not in base64url."""
    return f"w{worker}."


def worker_of(head: bytes, workers: int) -> int | None:
    """The worker (1..N) whose sid the request line in ``head`` carries, if any."""
    line = head.split(b"\n", 1)[0]
    if b"sid=" not in line:
        return None
    parts = line.split()
    if len(parts) < 2:
        return None
    sids = parse_qs(urlsplit(parts[1].decode("latin-1")).query).get("sid")
    match = _SID.match(sids[0]) if sids else None
    worker = int(match.group(1)) if match else 0
    return worker if 1 <= worker <= workers else None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Router:
    """Accept on ``listeners``, hand each connection to one of ``channels`` (worker k: index k-1).

    ``peek_timeout_s`` bounds the wait for a request line: a connection that sends none is closed.
    """

    def __init__(self, listeners: list[socket.socket], channels: list[socket.socket], *,
                 peek_timeout_s: float = 10.0) -> None:
        self.listeners = listeners
        self.channels = channels
        self.peek_timeout_s = peek_timeout_s
        self._next = itertools.cycle(range(len(channels)))
        self._queued: list[deque[socket.socket]] = [deque() for _ in channels]
        self._waiting: set[asyncio.Task[None]] = set()
        self.handed = [0] * len(channels)  # connections handed to each worker

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)

    def stop_accepting(self) -> None:
        """Close the listeners: new connections are refused while the workers drain theirs."""
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            if listener.fileno() >= 0:
                loop.remove_reader(listener.fileno())
                listener.close()

    async def aclose(self) -> None:
        self.stop_accepting()
        for task in list(self._waiting):
            task.cancel()
        await asyncio.gather(*self._waiting, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for k, channel in enumerate(self.channels):
            if channel.fileno() >= 0:
                loop.remove_writer(channel.fileno())
                channel.close()
            while self._queued[k]:
                self._queued[k].popleft().close()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # a batch, then the loop's other work
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors: the kernel keeps the rest queued
                log(logger, "accept_failed", logging.WARNING, error=exc.strerror or str(exc))
                return
            conn.setblocking(False)
            head = self._peek(conn)
            if head is None:  # not here yet: wait for it without holding up the others
                task = asyncio.get_running_loop().create_task(self._route_later(conn))
                self._waiting.add(task)
                task.add_done_callback(self._waiting.discard)
            elif head:
                self._hand(conn, head)
            else:
                conn.close()

    def _peek(self, conn: socket.socket) -> bytes | None:
        """The request line so far: b"" when the client left, None when more is to come."""
        try:
            head = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        if head and b"\n" not in head and len(head) < PEEK_BYTES:
            return None
        return head

    async def _route_later(self, conn: socket.socket) -> None:
        try:
            async with asyncio.timeout(self.peek_timeout_s):
                head = await self._request_line(conn)
        except (TimeoutError, OSError):  # no request line in time
            conn.close()
            return
        except asyncio.CancelledError:  # the router closes
            conn.close()
            raise
        if head:
            self._hand(conn, head)
        else:
            conn.close()

    async def _request_line(self, conn: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        waited = False
        while (head := self._peek(conn)) is None:
            if waited:  # part of the line came: the socket stays readable, so look again shortly
                await asyncio.sleep(_RETRY_S)
                continue
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(conn.fileno(), _resolve, readable)
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())
            waited = True
        return head

    def _hand(self, conn: socket.socket, head: bytes) -> None:
        worker = worker_of(head, len(self.channels))
        k = next(self._next) if worker is None else worker - 1
        self._queued[k].append(conn)
        if len(self._queued[k]) == 1:
            self._flush(k)

    def _flush(self, k: int) -> None:
        """Send worker k its queued connections; if its channel is full, again once it drains."""
        channel, queued = self.channels[k], self._queued[k]
        loop = asyncio.get_running_loop()
        while queued:
            conn = queued[0]
            try:
                socket.send_fds(channel, [b"c"], [conn.fileno()])
            except BlockingIOError:
                loop.add_writer(channel.fileno(), self._flush, k)
                return
            except OSError:  # the worker is gone (the supervisor stops the rest): drop the client
                pass
            else:
                self.handed[k] += 1
            queued.popleft().close()
        loop.remove_writer(channel.fileno())
