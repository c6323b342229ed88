"""Engine.IO as its protocol and the maintainers' conformance suite say, on python-engineio.

:class:`ConformantServer` and :class:`ConformantSocket` subclass python-engineio's asyncio server
and socket and change what the Engine.IO v4 protocol (and Node's ``engine.io``, its reference)
answers differently from python-engineio 4.x. Each change is small and could go upstream as is:

* the handshake advertises ``pingInterval`` and ``pingTimeout`` exactly, in milliseconds
  (python-engineio sends ``int(interval + grace) * 1000``: 0 for 0.3 s, and an official client
  then waits for a ping within ``pingTimeout`` and drops);
* a request without ``transport``, or with a method other than GET, POST or OPTIONS, is a bad
  request (400; python-engineio took polling for granted, and aiohttp answered 405);
* a polling POST is answered ``ok``; one whose body is not an Engine.IO payload is answered 400
  and closes the session (python-engineio logged a traceback, answered OK and went on);
* a client's CLOSE ends its transport at once (python-engineio waited for the ping timeout): a
  pending long-polling GET is answered with a NOOP, a websocket is closed;
* a second GET while one is pending closes the session: the first gets CLOSE, the second 400;
* a session whose client misses a pong is closed at the ping timeout, not whenever the service
  task comes round to it: every ping's deadline waits in one queue, under one task for the
  whole server (:meth:`ConformantServer._pong_loop`);
* pings go out from one timer for the whole server (:meth:`ConformantServer._ping_loop`), not a
  task and a timer per socket and per ping, and straight onto an idle websocket when the server
  can write there (``write_frame``);
* on a websocket that writes straight to its TCP transport (websocket.py), frames are read in
  aiohttp's request task and packets written at once: python-engineio's writer task, and its
  task and timer for every frame read, are gone; a silent peer is closed at its pong's deadline,
  with a close frame, as Node's engine.io does (python-engineio's reader gave up after ping
  interval + timeout without a frame); an upgraded socket's writer (with
  compression on) waits for its queue without a timer of its own;
* a socket's queue keeps its state in lists, not four deques (:class:`PacketQueue`);
* after an upgrade no NOOP reaches the websocket (python-engineio queues one to end a pending
  poll; with no poll pending it went out on the websocket later);
* a websocket for a session that is upgrading or upgraded is opened and closed, where
  python-engineio answered HTTP 400 (Node closes it; clients see a close, not an error).

Upstream, the first two would be a fix in ``_handle_connect`` (``round((interval + grace) *
1000)``) and ``handle_request`` (no default transport); :meth:`ConformantServer._handle_connect`
mirrors python-engineio's own, with a socket class that can be chosen (``socket_class``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
from engineio import async_socket, exceptions, packet

from .websocket import CLOSE_BOUND_S, text_frame


def ping_ms(seconds: float) -> int:
    """A ping figure in whole milliseconds, as the handshake advertises it."""
    return round(seconds * 1000)


class BadPayload(exceptions.EngineIOError):  # type: ignore[misc]
    """A long-polling body that is not an Engine.IO payload."""


class _Slots(list):  # type: ignore[type-arg]
    """A list with deque's ``popleft``: what asyncio's queue and event keep in deques."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class PacketQueue(asyncio.Queue):  # type: ignore[type-arg]
    """asyncio's unbounded queue, its state in lists instead of deques: an empty deque holds a
    64-slot block, and a queue has four (items, getters, putters, its event's waiters), 3 KB per
    socket held for its whole life; lists of what a socket queues (a few packets, one getter)
    cost a few hundred bytes. Same behaviour: only the containers change."""

    def __init__(self) -> None:
        super().__init__()
        self._getters = _Slots()
        self._putters = _Slots()
        self._finished._waiters = _Slots()  # type: ignore[attr-defined]

    def _init(self, maxsize: int) -> None:
        self._queue = _Slots()


class ConformantSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    server: ConformantServer

    def __init__(self, server: Any, sid: str) -> None:
        super().__init__(server, sid)
        self.last_ping: float | None = self.last_ping  # when the last ping went out; None: the next is due
        self.polls_pending = 0  # long-polling GETs waiting for packets (more than one closes the session)
        # the websocket packets are written to at once (see _websocket_handler); None: through the queue
        self.ws: Any = None
        self._ws_closing: asyncio.Task[Any] | None = None

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        connections = [s.strip() for s in environ.get("HTTP_CONNECTION", "").lower().split(",")]
        if "upgrade" in connections or self.upgrading or self.upgraded:
            return await super().handle_get_request(environ)
        if self.polls_pending:  # the pending GET gets CLOSE, this one 400
            await self.end(self.server.reason.TRANSPORT_ERROR)
            raise exceptions.EngineIOError("duplicate poll")
        self.polls_pending += 1
        try:
            return await super().handle_get_request(environ)
        finally:
            self.polls_pending -= 1

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        try:
            await super().handle_post_request(environ)
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # bad UTF-8, framing, type, base64
            # python-engineio logged a traceback, answered OK and went on. Closed here, the server
            # answers 400 and forgets the session without waiting for the CLOSE to be fetched.
            await self.end(self.server.reason.TRANSPORT_ERROR)
            raise BadPayload(str(exc)) from exc

    async def receive(self, pkt: Any) -> None:
        await super().receive(pkt)
        if pkt.packet_type == packet.PONG and self.server.on_pong is not None:
            await self.server.on_pong(self.sid)
        elif pkt.packet_type == packet.CLOSE:
            # The transport ends now, as with Node's engine.io, not after ping interval + timeout
            # (python-engineio's): a pending long-polling GET gets a NOOP, a websocket's writer ends
            # and closes it.
            if not self.upgraded:
                self.queue.put_nowait(packet.Packet(packet.NOOP))
            self.end_transport()

    def end_transport(self) -> None:
        """End the transport once what is queued has gone: a long-polling GET gets what is left
        (python-engineio's ``None`` in the queue), a websocket is closed with a close frame."""
        if self.ws is None:
            self.queue.put_nowait(None)
        elif self._ws_closing is None:
            self._ws_closing = asyncio.ensure_future(self._close_ws(self.ws))

    @staticmethod
    async def _close_ws(ws: Any) -> None:
        """The close frame, one turn of the event loop after the end was asked for, as
        python-engineio's writer task sent it: the reader is back in aiohttp's receive(), which
        then ends the connection at once. Closed in the same turn, a client still sending lost
        the close frame to a reset in 4 of 12 runs of test_server_closes.py, none of 12 after."""
        await asyncio.sleep(0)
        await ws.close()

    async def send(self, pkt: Any) -> None:
        """Once the websocket is this socket's (see :meth:`_websocket_handler`), a packet is
        written to it at once: no queue, no writer task to wake."""
        ws = self.ws
        if ws is None:
            await super().send(pkt)
        elif await self.check_ping_timeout() and pkt.packet_type != packet.NOOP:
            ws.send_now(pkt.encode())

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """python-engineio's; then a websocket that is this socket's gets its close frame: at
        once after a ping timeout (python-engineio's reader timed it out at ping interval +
        timeout), CLOSE_BOUND_S later after Engine.IO's CLOSE, should the client not close first."""
        was_open = not (self.closed or self.closing)
        await super().close(wait=wait, abort=abort, reason=reason)
        if was_open and not abort and self.ws is not None:
            if reason == self.server.reason.PING_TIMEOUT:
                self.end_transport()
            else:
                asyncio.get_running_loop().call_later(CLOSE_BOUND_S, self.end_transport)

    async def _websocket_handler(self, ws: Any) -> None:
        """python-engineio's, on a websocket that writes straight to its TCP transport
        (websocket.py: no compression), without its two tasks per connection and a task and a
        timer per frame received: once the upgrade is done, packets are written at once
        (:meth:`send`), and frames are read in this task. A silent peer is timed out at its
        pong's deadline (:meth:`ConformantServer._pong_loop`), not by a timer on each read.
        With compression on, python-engineio's handler as it is."""
        if not getattr(ws, "direct", False):
            await super()._websocket_handler(ws)
            return
        if self.connected:  # type: ignore[has-type]  # an upgrade from long-polling, as python-engineio's
            if not await self._upgrade(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        self.ws = ws
        ended = self._drain_to(ws)
        while not ended:
            try:
                data = await ws.wait()
            except Exception:  # the websocket closed (or failed): the session's transport is gone
                break
            try:
                await self.receive(packet.Packet(encoded_packet=data))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                break
            except Exception:
                self.server.logger.exception("Unknown receive error")
            # one frame per turn of the event loop: aiohttp returns a frame already buffered
            # without yielding, and a flood would otherwise be served before anyone else
            await asyncio.sleep(0)
        self.end_transport()
        closing = self._ws_closing
        if closing is not None:
            await closing
        await super().close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _upgrade(self, ws: Any) -> bool:
        """The upgrade from long-polling (python-engineio's): the probe, then UPGRADE."""
        self.upgrading = True  # hold packet sends during the upgrade
        try:
            probe = packet.Packet(encoded_packet=await ws.wait())
            if probe.packet_type != packet.PING or probe.data != "probe":
                self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
                return False
            ws.send_now(packet.Packet(packet.PONG, data="probe").encode())
            self.queue.put_nowait(packet.Packet(packet.NOOP))  # ends the pending poll
            upgrade = packet.Packet(encoded_packet=await ws.wait())
            if upgrade.packet_type != packet.UPGRADE:
                self.server.logger.info("%s: Failed websocket upgrade, expected UPGRADE packet", self.sid)
                return False
            self.upgraded = True
            return True
        except OSError:
            return False
        finally:
            self.upgrading = False

    def _drain_to(self, ws: Any) -> bool:
        """Write what the queue holds to the websocket, now that packets go there at once; True
        if the transport's end was queued. A GET still pending gets a NOOP, as after an upgrade."""
        queue = self.queue
        ended = False
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                ended = True
                break
            if pkt.packet_type != packet.NOOP:
                ws.send_now(pkt.encode())
        if any(not getter.done() for getter in queue._getters):
            queue.put_nowait(packet.Packet(packet.NOOP))
        return ended

    async def poll(self) -> list[Any]:
        """Once upgraded (only the websocket's writer polls), the writer waits for packets with no
        timeout (python-engineio's, ping interval + timeout, cost a timer per wait; pings no
        longer pass through the queue, and the reader ends a silent connection), and NOOPs are
        dropped: they only ever end a long-polling GET. An empty list still means the end."""
        if not self.upgraded:
            return await super().poll()  # type: ignore[no-any-return]
        while True:
            pkt = await self.queue.get()
            self.queue.task_done()
            if pkt is None:
                # one turn first: the reader, which queued this end, gets back into receive(), and
                # aiohttp's close() then ends it at once instead of waiting CLOSE_WAIT_S for the peer
                await asyncio.sleep(0)
                return []
            packets = [pkt]
            while not self.queue.empty():  # as python-engineio's: what else is queued goes too
                pkt = self.queue.get_nowait()
                self.queue.task_done()
                if pkt is None:
                    self.queue.put_nowait(None)  # the end, for the next poll
                    break
                packets.append(pkt)
            kept = [p for p in packets if p.packet_type != packet.NOOP]
            if kept:
                return kept

    async def end(self, reason: Any) -> None:
        """Close a long-polling session now: a pending GET gets CLOSE, any later request 400
        (python-engineio's ``close()`` would wait for the CLOSE to be fetched)."""
        await self.close(wait=False, abort=True, reason=reason)
        self.queue.put_nowait(packet.Packet(packet.CLOSE))
        self.end_transport()

    def _polling(self) -> bool:
        return not (self.upgrading or self.upgraded or self.closing or self.closed)

    def schedule_ping(self) -> None:
        """The next ping, ``ping_interval`` after the last one was answered: a place in the
        server's queue of pings (python-engineio started a task that slept the interval)."""
        if self.last_ping:
            self.last_ping = None
            self.server.ping_later(self)

    async def ping(self) -> None:
        """Send the ping that is due (:meth:`ConformantServer._ping_loop`)."""
        if self.closing or self.closed:
            return
        self.last_ping = sent_at = time.time()
        write = self.server.write_frame
        self.server.pong_due(self, sent_at)
        if write is not None and write(self.sid, PING_FRAME):
            return
        await self.send(packet.Packet(packet.PING))

    async def pong_missed(self) -> None:
        """The pong did not come within ``ping_timeout`` (:meth:`ConformantServer._pong_loop`):
        a pending long-polling GET gets CLOSE, a websocket its close frame."""
        if self._polling():
            await self.end(self.server.reason.PING_TIMEOUT)
        else:
            await self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)


class Deadlines:
    """Sockets due at loop times, for one loop over all of them: every wait added is the same
    (a ping interval, a ping timeout), so appending keeps the queue in order, and the loop
    sleeps until the first is due, then acts on every one that is."""

    def __init__(self) -> None:
        self._due: deque[tuple[float, ConformantSocket, Any]] = deque()  # (loop time, socket, its argument)
        self._added = asyncio.Event()

    def add(self, wait: float, socket: ConformantSocket, arg: Any) -> None:
        if not self._due:
            self._added.set()
        self._due.append((asyncio.get_running_loop().time() + wait, socket, arg))

    async def run(self, act: Callable[[ConformantSocket, Any], Awaitable[None]], logger: Any) -> None:
        loop = asyncio.get_running_loop()
        due = self._due
        while True:
            if not due:
                self._added.clear()
                await self._added.wait()
                continue
            wait = due[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            n = 0
            while due and due[0][0] <= now:
                _, socket, arg = due.popleft()
                try:
                    await act(socket, arg)
                except Exception:  # one socket's failure must not stop the others'
                    logger.exception("%s failed for %s", getattr(act, "__name__", "act"), socket.sid)
                n += 1
                if n % SWEEP_BATCH == 0:  # yield to the loop between batches
                    await asyncio.sleep(0)


async def _close_at_once(ws: Any) -> None:
    await ws.close()


SWEEP_BATCH = 1000  # sockets checked for a ping timeout (or pinged) between two yields to the event loop
PING_FRAME = text_frame(b"2")  # Engine.IO's PING as a websocket frame, for write_frame


class ConformantServer(engineio.AsyncServer):  # type: ignore[misc]
    socket_class: type[ConformantSocket] = ConformantSocket
    # (eio_sid) a client answered a ping: the one sign of life an idle client gives
    on_pong: Callable[[str], Awaitable[None]] | None = None
    sid_prefix = ""  # before every sid made here: a worker's number, for sticky routing (sticky.py)
    # (eio_sid, frame) write a websocket frame straight to the socket's transport if it is idle
    # there (websocket.Transports.write_frame); False: it goes through the socket's queue
    write_frame: Callable[[str, bytes], bool] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pings = Deadlines()  # sockets whose next ping is due (every wait: ping_interval)
        self._pongs = Deadlines()  # pings whose pong is due (every wait: ping_timeout)
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the two loops over them, started when first needed

    def ping_later(self, socket: ConformantSocket) -> None:
        self._start(self._ping_loop)
        self._pings.add(self.ping_interval, socket, None)

    def pong_due(self, socket: ConformantSocket, sent_at: float) -> None:
        self._start(self._pong_loop)
        self._pongs.add(self.ping_timeout, socket, sent_at)

    def _start(self, loop: Callable[[], Awaitable[None]]) -> None:
        if loop.__name__ not in self._tasks:
            self._tasks[loop.__name__] = asyncio.ensure_future(loop())

    async def _ping_loop(self) -> None:
        """Every socket's pings, from one task."""
        await self._pings.run(self._ping, self.logger)

    async def _pong_loop(self) -> None:
        """Every ping's deadline, from one task: a socket whose pong has not come by then is
        closed, ``ping_timeout`` after its ping as the protocol says (the sweep of
        :meth:`_service_task` only every ``ping_timeout / 2``; python-engineio timed a websocket
        out with a timer on every read, and a long-polling socket with a task per ping)."""
        await self._pongs.run(self._pong_missed, self.logger)

    @staticmethod
    async def _ping(socket: ConformantSocket, _: None) -> None:
        await socket.ping()

    @staticmethod
    async def _pong_missed(socket: ConformantSocket, sent_at: float) -> None:
        if socket.last_ping == sent_at and not (socket.closing or socket.closed):
            await socket.pong_missed()

    async def shutdown(self) -> None:
        await super().shutdown()
        tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return PacketQueue() if not (args or kwargs) else super().create_queue(*args, **kwargs)

    def generate_id(self) -> str:
        return self.sid_prefix + str(super().generate_id())

    def attach(self, app: Any, engineio_path: str = "engine.io") -> None:
        super().attach(app, engineio_path)
        # every other method reaches handle_request too, for a 400 (aiohttp would answer 405)
        app.router.add_route("*", f"/{engineio_path.strip('/')}/", self.handle_request)

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        request: Any = args[0] if args else None
        query = getattr(request, "query", None)  # aiohttp's request; other drivers go straight through
        if query is not None:
            if "transport" not in query and request.method != "OPTIONS":
                return await self._refuse(request, "Transport unknown")
            sid = query.get("sid")
            socket = self.sockets.get(sid) if sid else None
            if (socket is not None and (socket.upgrading or socket.upgraded)
                    and request.headers.get("Upgrade", "").lower() == "websocket"):
                return await self._open_and_close(request)
        return await super().handle_request(*args, **kwargs)

    async def _refuse(self, request: Any, message: str) -> Any:
        environ = self._async["translate_request"](request)
        return await self._make_response(self._bad_request(message), environ)

    async def _open_and_close(self, request: Any) -> Any:
        """A second websocket for a session that has one: Node accepts it and closes it."""
        environ = self._async["translate_request"](request)
        ws = self._async["websocket"](_close_at_once, self)
        return await ws(environ)

    def _method_not_found(self) -> dict[str, Any]:
        return self._bad_request("Bad request method")  # type: ignore[no-any-return]

    def _ok(self, packets: Any = None, headers: Any = None, jsonp_index: Any = None) -> dict[str, Any]:
        response: dict[str, Any] = super()._ok(packets, headers=headers, jsonp_index=jsonp_index)
        if packets is None:
            response["response"] = b"ok"
        return response

    async def _service_task(self) -> None:
        """python-engineio's closes the sockets whose ping went unanswered, one socket at a time
        with a wait of ``ping_timeout / len(sockets)`` between two: each wait a task and a timer,
        and once a wait (0.5 ms at 10,000 connections) is shorter than the work around it, a
        busy loop: 10,000 idle players cost 97% of a core, 5,000 cost 21%. Here one pass over
        every socket each ``ping_timeout / 2`` (a dead peer is closed within 1.5 x
        ``ping_timeout`` of the unanswered ping, not 2 x), yielding to the loop every
        :data:`SWEEP_BATCH` sockets."""
        self.service_task_event = self.create_event()
        while not self.service_task_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.service_task_event.wait(), self.ping_timeout / 2)
                break
            for n, s in enumerate(list(self.sockets.values()), 1):
                if s.closed:
                    self.sockets.pop(s.sid, None)
                elif not s.closing:
                    try:
                        await s.check_ping_timeout()
                    except exceptions.SocketIsClosedError:
                        pass
                    except Exception:  # one socket's failure must not end the sweep for all
                        self.logger.exception("ping timeout check failed for %s", s.sid)
                if n % SWEEP_BATCH == 0:
                    await asyncio.sleep(0)

    async def _handle_connect(self, environ: dict[str, Any], transport: str, jsonp_index: Any = None) -> Any:
        """python-engineio 4.x's, but for two lines: ``socket_class``, and ping figures in exact ms."""
        if self.start_service_task:  # type: ignore[has-type]
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)

        sid = self.generate_id()
        s = self.socket_class(self, sid)
        self.sockets[sid] = s

        pkt = packet.Packet(packet.OPEN, {
            "sid": sid,
            "upgrades": self._upgrades(sid, transport),
            "pingTimeout": ping_ms(self.ping_timeout),
            "pingInterval": ping_ms(self.ping_interval + self.ping_interval_grace_period),
            "maxPayload": self.max_http_buffer_size,
        })
        await s.send(pkt)

        ret = await self._trigger_event("connect", sid, environ, run_async=False)
        if ret is not None and ret is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            return self._unauthorized(ret or None)

        s.schedule_ping()

        if transport == "websocket":
            ret = await s.handle_get_request(environ)
            if s.closed and sid in self.sockets:
                del self.sockets[sid]
            return ret
        s.connected = True
        headers = None
        if self.cookie:
            cookie = self.cookie if isinstance(self.cookie, dict) else {"name": self.cookie, "path": "/",
                                                                         "SameSite": "Lax"}
            headers = [("Set-Cookie", self._generate_sid_cookie(sid, cookie))]
        try:
            return self._ok(await s.poll(), headers=headers, jsonp_index=jsonp_index)
        except exceptions.QueueEmpty:
            return self._bad_request()
