"""The websocket transport under Engine.IO, made for fan-out.

python-engineio hands every outgoing packet to a per-connection queue, wakes that connection's
writer task, and the task asks aiohttp to frame and (by default) compress it. For a broadcast to
N players that is N task wake-ups, N framings and N compressions of the same bytes. Here:

* permessage-deflate is refused by default (it cost about a quarter of the gateway's CPU and
  ~90 KB per connection); ``websocket_compression`` turns it back on;
* :class:`GameWebSocket` writes frames straight to the TCP transport, synchronously, so the
  library's writer task never yields in the middle of a batch;
* :func:`text_frame` builds a broadcast's frame once, and the same bytes go to each recipient,
  provided nothing is waiting in that connection's queue or in the hands of its writer task (so
  a direct write can never overtake a queued packet) and the connection is not upgrading;
* what a connection is sent during one turn of the event loop leaves in one ``write`` call at
  the end of the turn (one syscall instead of one per frame; under load, turns get longer and
  batches larger, which keeps the gateway from collapsing);
* a recipient whose unsent bytes pass ``max_outbound_bytes`` is a slow consumer: its connection
  is cut (a drop) instead of letting the gateway's memory grow;
* a frame over ``max_message_bytes`` is refused by aiohttp's reader from the frame's header,
  before its payload is buffered; the connection is told why (``disconnect_reason`` 4413) just
  before aiohttp closes it with 1009;
* a text frame python-engineio cannot decode (empty, a type that is not 0-6, bad base64) never
  reaches it (its decoder raised out of the connection's handler: a traceback per frame, which
  anyone could send); the connection is closed as for any bad packet (4400);
* :meth:`Transports.abort` cuts a connection as a network fault would (``simulate-drop``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode
from aiohttp.web import WebSocketResponse
from engineio.async_drivers.aiohttp import WebSocket as EngineioWebSocket

# The close handshake waits CLOSE_WAIT_S at most for the peer's answer (aiohttp waits 10 s by
# default): a blackholed client must turn into a drop within ping interval + timeout, not 10 s
# later. A live client has the close frame long before.
CLOSE_WAIT_S = 0.1
# A transport the server ends on purpose (after ``disconnect_reason``, a refused namespace, a
# handshake that took too long) is gone this long after at most, whatever its client does: a
# websocket's TCP connection is cut, a long-polling session forgotten (its next request gets 400).
CLOSE_BOUND_S = 1.0
logger = logging.getLogger("gamegw.websocket")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def engineio_frame_ok(data: str | bytes) -> bool:
    """Whether python-engineio can decode a websocket frame (a binary one is always a message)."""
    if isinstance(data, bytes):
        return True
    if not data:
        return False
    if data[0] == "b":  # base64 binary
        try:
            base64.b64decode(data[1:])
        except binascii.Error:
            return False
        return True
    return data[0] in "0123456"


def binary_frame(payload: bytes) -> bytes:
    frame = bytearray(text_frame(payload))
    frame[0] = 0x82
    return bytes(frame)


class Transports:
    """Engine.IO session id -> its open websocket, for direct writes and simulated faults."""

    def __init__(self, eio_server: Any, *, max_outbound_bytes: int,
                 on_slow_consumer: Callable[[str], None] | None = None,
                 on_message_too_big: Callable[[str], str | None] | None = None) -> None:
        self._eio = eio_server
        self._by_eio_sid: dict[str, GameWebSocketBase] = {}
        self.max_outbound_bytes = max_outbound_bytes
        self.on_slow_consumer = on_slow_consumer
        self.on_message_too_big = on_message_too_big  # returns an Engine.IO packet to send before the close
        self.on_bad_frame: Callable[[str], None] | None = None  # (eio_sid) a frame Engine.IO cannot decode
        self._dirty: list[GameWebSocketBase] = []

    def mark_dirty(self, ws: GameWebSocketBase) -> None:
        """Flush ``ws`` once this turn of the event loop is over: one syscall for all it got."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self._dirty.append(ws)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for ws in dirty:
            try:
                ws.flush()
            except Exception:  # one broken socket must not leave the others unflushed for good
                logger.exception("websocket flush failed")

    def add(self, eio_sid: str, ws: GameWebSocketBase) -> None:
        self._by_eio_sid[eio_sid] = ws

    def discard(self, eio_sid: str, ws: GameWebSocketBase) -> None:
        if self._by_eio_sid.get(eio_sid) is ws:
            del self._by_eio_sid[eio_sid]

    def writable(self, eio_sid: str) -> GameWebSocketBase | None:
        """The websocket to write to directly, or None to go through Engine.IO's queue."""
        ws = self._by_eio_sid.get(eio_sid)
        if ws is None or not ws.direct:
            return None
        sock = self._eio.sockets.get(eio_sid)
        if sock is not None and sock.ws is ws:  # packets go straight to it (eio.ConformantSocket.send)
            return None if sock.closed else ws
        if sock is None or not sock.upgraded or sock.upgrading or sock.closed or not sock.queue.empty():
            return None
        # The queue is empty, but the writer task may hold a packet it took and has not written
        # yet (it resumes a loop turn after taking it): a direct write now would overtake it.
        # The writer is idle only while it waits in ``queue.get()``.
        if not getattr(sock.queue, "_getters", True):
            return None
        return ws

    def write_frame(self, eio_sid: str, frame: bytes) -> bool:
        """Write ``frame`` to the session's websocket if it can go there directly (see
        :meth:`writable`); False if it must go through Engine.IO's queue."""
        ws = self.writable(eio_sid)
        if ws is None:
            return False
        ws.write(frame)
        return True

    def abort(self, eio_sid: str) -> bool:
        """Cut the TCP connection with no close frame and no disconnect packet."""
        ws = self._by_eio_sid.pop(eio_sid, None)
        transport = ws.transport if ws is not None else None
        if transport is None or transport.is_closing():
            return False
        transport.abort()
        return True

    def abort_all(self) -> int:
        """At the end of a drain: cut what clients have not closed themselves."""
        self.flush()
        return sum(self.abort(eio_sid) for eio_sid in list(self._by_eio_sid))

    def slow(self, eio_sid: str) -> None:
        if self.abort(eio_sid) and self.on_slow_consumer is not None:
            self.on_slow_consumer(eio_sid)


class _Response(WebSocketResponse):
    """aiohttp closes the websocket itself when a frame is too big; this lets us speak first."""

    on_too_big: Callable[[], None] | None = None

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and self.on_too_big is not None:
            on_too_big, self.on_too_big = self.on_too_big, None
            on_too_big()
        return await super().close(code=code, message=message, drain=drain)


class GameWebSocketBase(EngineioWebSocket):  # type: ignore[misc]
    transports: Transports
    compress: bool

    transport: asyncio.Transport | None = None
    eio_sid: str | None = None
    _out: list[bytes] | None = None  # frames written this turn of the loop, not yet on the transport

    @property
    def direct(self) -> bool:
        return not self.compress and self.transport is not None

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request = environ["aiohttp.request"]
        # aiohttp refuses a frame of exactly max_msg_size bytes (it checks ``>=``): one more, so
        # that max_message_bytes is allowed; wait() refuses max + 1 should aiohttp ever change
        self._sock = sock = _Response(max_msg_size=self.server.max_http_buffer_size + 1, compress=self.compress,
                                      timeout=CLOSE_WAIT_S)
        sock.on_too_big = self._too_big
        await sock.prepare(request)
        self.environ = environ
        self.eio_sid = getattr(getattr(self.handler, "__self__", None), "sid", None)
        self.transport = request.transport
        if self.eio_sid:
            self.transports.add(self.eio_sid, self)
        try:
            await self.handler(self)
        finally:
            if self.eio_sid:
                self.transports.discard(self.eio_sid, self)
        return self._sock

    async def wait(self) -> str | bytes:
        """The next frame python-engineio can decode; the others are reported and skipped (the
        report closes the connection: reading goes on until the close is done)."""
        while True:
            data: str | bytes = await super().wait()
            if len(data) > self.server.max_http_buffer_size:
                await self._sock.close(code=WSCloseCode.MESSAGE_TOO_BIG)
                raise OSError("message too big")
            if engineio_frame_ok(data):
                return data
            if self.transports.on_bad_frame is not None and self.eio_sid:
                self.transports.on_bad_frame(self.eio_sid)

    def _too_big(self) -> None:
        """A frame over the limit: say so (``disconnect_reason``) before aiohttp's close frame."""
        hook = self.transports.on_message_too_big
        packet = hook(self.eio_sid) if hook is not None and self.eio_sid else None
        if packet is not None and self.transport is not None and not self.compress:
            self.write(text_frame(packet.encode()))
        self.flush()

    async def send(self, message: str | bytes) -> None:
        """Engine.IO's writer task calls this for each queued packet: write it now, no yield."""
        if not self.direct:
            await super().send(message)
            return
        self.send_now(message)

    def send_now(self, message: str | bytes) -> None:
        """An encoded Engine.IO packet, framed and written (direct websockets only)."""
        payload = message if isinstance(message, bytes) else message.encode()
        self.write(binary_frame(payload) if isinstance(message, bytes) else text_frame(payload))

    def write(self, frame: bytes) -> None:
        if self._out is None:
            self._out = [frame]
            self.transports.mark_dirty(self)
        else:
            self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, None
        transport = self.transport
        if not out or transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if transport.get_write_buffer_size() > self.transports.max_outbound_bytes and self.eio_sid:
            self.transports.slow(self.eio_sid)

    async def close(self) -> None:
        self.flush()  # what was written must go out before the close frame
        await super().close()


def install(eio_server: Any, *, compress: bool, max_outbound_bytes: int) -> Transports:
    """Swap the driver's websocket class (python-engineio looks it up in ``_async``)."""
    transports = Transports(eio_server, max_outbound_bytes=max_outbound_bytes)

    class GameWebSocket(GameWebSocketBase):
        pass

    GameWebSocket.transports = transports
    GameWebSocket.compress = compress
    eio_server._async = {**eio_server._async, "websocket": GameWebSocket}
    eio_server.write_frame = transports.write_frame
    return transports
