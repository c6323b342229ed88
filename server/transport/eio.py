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
* a polling session whose client misses a pong is closed at the ping timeout, not whenever the
  service task comes round to it;
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
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
from engineio import async_socket, exceptions, packet


def ping_ms(seconds: float) -> int:
    """A ping figure in whole milliseconds, as the handshake advertises it."""
    return round(seconds * 1000)


class BadPayload(exceptions.EngineIOError):  # type: ignore[misc]
    """A long-polling body that is not an Engine.IO payload."""


class ConformantSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    server: ConformantServer

    def __init__(self, server: Any, sid: str) -> None:
        super().__init__(server, sid)
        self.polls_pending = 0  # long-polling GETs waiting for packets (more than one closes the session)

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
            self.queue.put_nowait(None)

    async def poll(self) -> list[Any]:
        """Once upgraded (only the websocket's writer polls), NOOPs are dropped: they only ever end
        a long-polling GET. An empty list still means the end."""
        while True:
            packets: list[Any] = await super().poll()
            if not self.upgraded or not packets:
                return packets
            kept = [p for p in packets if p.packet_type != packet.NOOP]
            if kept:
                return kept

    async def end(self, reason: Any) -> None:
        """Close a long-polling session now: a pending GET gets CLOSE, any later request 400
        (python-engineio's ``close()`` would wait for the CLOSE to be fetched)."""
        await self.close(wait=False, abort=True, reason=reason)
        self.queue.put_nowait(packet.Packet(packet.CLOSE))
        self.queue.put_nowait(None)

    def _polling(self) -> bool:
        return not (self.upgrading or self.upgraded or self.closing or self.closed)

    async def _send_ping(self) -> None:
        await super()._send_ping()
        sent_at = self.last_ping
        if sent_at is None or not self._polling():
            return  # a websocket's reader times out by itself
        await asyncio.sleep(self.server.ping_timeout)
        if self.last_ping == sent_at and self._polling():
            await self.end(self.server.reason.PING_TIMEOUT)


async def _close_at_once(ws: Any) -> None:
    await ws.close()


SWEEP_BATCH = 1000  # sockets checked for a ping timeout between two yields to the event loop


class ConformantServer(engineio.AsyncServer):  # type: ignore[misc]
    socket_class: type[ConformantSocket] = ConformantSocket
    # (eio_sid) a client answered a ping: the one sign of life an idle client gives
    on_pong: Callable[[str], Awaitable[None]] | None = None
    sid_prefix = ""  # before every sid made here: a worker's number, for sticky routing (sticky.py)

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
