"""A lean Socket.IO client for load generation: websocket only, namespace ``/game``, under gevent.

Why not python-socketio's client: a Locust worker must hold thousands of players, each
receiving ten ``move`` events a second. python-socketio's sync client runs two threads per
connection and parses each frame with several small reads. Here no connection has a greenlet
of its own: one reader per process (:mod:`.reactor`) reads every socket that is ready in one
pass, whole buffers at a time (every complete frame in a read is handled at once), with orjson
for payloads; a ``move`` event goes straight to ``on_move`` with the moment it was read. It
speaks just what the load test needs of Engine.IO v4 / Socket.IO v5:

* the websocket upgrade (``/socket.io/?EIO=4&transport=websocket``), the ``open`` packet and
  ping/pong;
* ``CONNECT`` with an auth payload, ``CONNECT_ERROR``, ``EVENT``, ``ACK`` and ``DISCONNECT`` on
  ``/game``;
* :meth:`GameSocket.drop`, which cuts the TCP connection without a close frame or a
  ``DISCONNECT`` packet, as a network fault would, so that the gateway sees a *drop*.

Blocking calls (:meth:`connect`, :meth:`call`) wait on gevent primitives, so a Locust user's
greenlet yields while it waits. Outside gevent nothing here works cooperatively; it is only
used inside Locust.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import gevent
import orjson
from gevent.event import AsyncResult, Event

from .reactor import reactor
from .wsframe import OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

NAMESPACE = "/game"
_NS_PREFIX = NAMESPACE + ","
_MOVE = b'42/game,["move",'  # a ``move`` event's text frame starts so; its payload follows
_MOVE_AT = len(_MOVE)

EventHandler = Callable[[str, Any], None]
MoveHandler = Callable[[Any, float, int], None]
RECV_BYTES = 16384  # a read's most: frames are ~130 bytes, and a 64 KB buffer cost its allocation each read
# the ack id, its payload (None when it failed), the failure, and the Unix time it came (or failed)
AckCallback = Callable[[int, Any, Exception | None, float], None]


class Refused(Exception):
    """The gateway answered ``CONNECT`` with ``connect_error``: ``message`` is the contract's code."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class Closed(Exception):
    """The connection ended (by the server, the network or :meth:`GameSocket.drop`)."""


class GameSocket:
    """One player's connection to ``/game``.

    ``on_event(name, data)`` runs in the process's reader greenlet for every server event; it
    must not block. ``on_move(data, now, second)``, when given, takes the ``move`` events instead,
    with the Unix time they were read (``second`` is ``int(now)``). ``on_close(reason)`` runs
    once when the connection ends for any reason but :meth:`close`/:meth:`drop`; ``reason`` is
    the server's ``disconnect_reason`` payload when one came, else a short text.
    """

    __slots__ = (
        "_acks",
        "_buf",
        "_closing",
        "_connected",
        "_fd",
        "_fragments",
        "_gone",
        "_last_reason",
        "_next_ack",
        "_outbox",
        "_recv",
        "_sock",
        "bytes_in",
        "host",
        "on_close",
        "on_event",
        "on_move",
        "path",
        "port",
        "session",
        "timeout_s",
    )

    def __init__(self, url: str, *, on_event: EventHandler | None = None, on_move: MoveHandler | None = None,
                 on_close: Callable[[Any], None] | None = None, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        if parts.scheme in ("https", "wss"):
            raise ValueError("TLS is not supported by the load-test client; point it at the gateway's plain port")
        self.path = (parts.path.rstrip("/") or "") + "/socket.io/?EIO=4&transport=websocket"
        self.on_event = on_event
        self.on_move = on_move
        self.on_close = on_close
        self.timeout_s = timeout_s
        self.session: dict[str, Any] | None = None
        self.bytes_in = 0
        self._sock: socket.socket | None = None
        self._recv: Callable[[int], bytes] | None = None  # the socket's own non-blocking recv
        self._fd = -1  # registered with the reactor while >= 0
        self._outbox: list[bytes] | None = None  # what waits for room in the socket's buffer
        self._acks: dict[int, AsyncResult | AckCallback] = {}
        self._next_ack = 0
        self._connected: AsyncResult = AsyncResult()
        self._closing = False
        self._buf = b""  # the start of a frame not complete yet
        self._fragments: list[bytes] = []
        self._last_reason: Any = None  # the latest disconnect_reason payload
        self._gone: Event | None = None  # close(): set when the connection has ended

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self, auth: dict[str, Any]) -> dict[str, Any]:
        """Open the websocket, join ``/game`` with ``auth`` and return the ``session`` event's
        payload. Raises :class:`Refused` for a ``connect_error``, :class:`Closed` or ``OSError``
        for transport failures, ``gevent.Timeout`` after ``timeout_s``."""
        with gevent.Timeout(self.timeout_s):
            sock = socket.create_connection((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            key = base64.b64encode(os.urandom(16)).decode()
            request = (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
            sock.sendall(request.encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    raise Closed("the gateway closed the connection during the websocket handshake")
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                raise Closed(f"websocket upgrade refused: {status.decode(errors='replace')}")
            self._recv = sock._sock.recv  # type: ignore[attr-defined]  # gevent's socket wraps the real one
            self._fd = sock.fileno()
            reactor().add(self._fd, self)
            if rest:
                now = time.time()
                self._data(rest, now, int(now))
            self._send_text("40" + _NS_PREFIX + orjson.dumps(auth).decode())
            result: dict[str, Any] = self._connected.get()
            return result

    def close(self, wait_s: float = 2.0) -> None:
        """Leave politely: a ``DISCONNECT`` packet and a close frame, then wait (``wait_s`` at
        most) for the gateway to close its side before the socket goes. Cutting it at once
        (a reset) could reach the gateway before it had read the DISCONNECT: a drop instead of
        a goodbye, and the session waits out its grace."""
        if self._sock is None or self._closing:
            return
        self._closing = True  # the reader ends quietly on the gateway's close
        gone = self._gone = Event()
        try:
            self._send_text("41" + _NS_PREFIX)
            self._send(frame(OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass
        else:
            if gevent.getcurrent() is not reactor().greenlet:
                gone.wait(timeout=wait_s)
        self._shutdown()

    def drop(self) -> None:
        """Cut the TCP connection with no close frame: the gateway sees a transport failure."""
        self._shutdown()

    def _shutdown(self) -> None:
        self._closing = True
        self._unregister()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()
        self._fail_pending(Closed("connection closed"))

    def _unregister(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            reactor().remove(fd)

    @property
    def connected(self) -> bool:
        return self._sock is not None and not self._closing

    # -- events ------------------------------------------------------------------------------

    def call(self, event: str, data: Any, timeout_s: float | None = None) -> Any:
        """Emit ``event`` and wait for its ack; returns the ack's payload."""
        return self.wait(self.emit(event, data), timeout_s)

    def emit(self, event: str, data: Any) -> tuple[int, AsyncResult]:
        """Emit ``event`` asking for an ack; :meth:`wait` on what this returns."""
        waiter: AsyncResult = AsyncResult()
        return self._emit(event, data, waiter), waiter

    def emit_cb(self, event: str, data: Any, callback: AckCallback) -> int:
        """Emit ``event``; ``callback`` runs in the reader greenlet when its ack comes (or the
        connection fails), and nobody waits: see :data:`AckCallback`. Returns the ack id, for
        :meth:`forget`."""
        return self._emit(event, data, callback)

    def _emit(self, event: str, data: Any, waiter: AsyncResult | AckCallback) -> int:
        if not self.connected:
            raise Closed("not connected")
        ack_id = self._next_ack
        self._next_ack += 1
        self._acks[ack_id] = waiter
        try:
            self._send_text(f"42{_NS_PREFIX}{ack_id}" + orjson.dumps([event, data]).decode())
        except BaseException:
            self._acks.pop(ack_id, None)
            raise
        return ack_id

    def forget(self, ack_id: int) -> None:
        """Stop waiting for an ack (its caller gave up on it)."""
        self._acks.pop(ack_id, None)

    def wait(self, pending: tuple[int, AsyncResult], timeout_s: float | None = None) -> Any:
        ack_id, waiter = pending
        try:
            return waiter.get(timeout=timeout_s or self.timeout_s)
        finally:
            if waiter.ready():
                self._acks.pop(ack_id, None)

    def _send_text(self, text: str) -> None:
        self._send(frame(OP_TEXT, text.encode()))

    def _send(self, data: bytes) -> None:
        """Send a frame without ever blocking the caller (the reactor and the schedule call this
        for every player): one non-blocking send when the kernel takes it whole, as it nearly
        always does; else what is left waits in order in an outbox that a greenlet drains."""
        sock = self._sock
        if sock is None:
            raise Closed("not connected")
        outbox = self._outbox
        if outbox is not None:  # earlier frames still wait: this one goes after them
            outbox.append(data)
            return
        try:
            sent = sock._sock.send(data)  # type: ignore[attr-defined]  # the real, non-blocking socket
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._outbox = [data[sent:]]
            gevent.spawn(self._drain, sock)

    def _drain(self, sock: socket.socket) -> None:
        outbox = self._outbox
        try:
            while outbox:
                sock.sendall(outbox.pop(0))  # waits (cooperatively) for room in the buffer
        except OSError:
            pass  # the connection is gone: its reader sees it end
        finally:
            self._outbox = None

    # -- reading -----------------------------------------------------------------------------

    def readable(self, now: float, second: int) -> None:
        """The reactor: this socket has data (or its end). Never raises."""
        recv = self._recv
        if recv is None or self._fd < 0:
            return
        try:
            chunk = recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._ended(f"transport error: {exc}")
            return
        if not chunk:
            self._ended("transport closed")
            return
        self.bytes_in += len(chunk)
        try:
            self._data(chunk, now, second)
        except _ServerClosed as exc:
            self._ended(exc.reason)
        except OSError as exc:  # a pong that could not be sent
            self._ended(f"transport error: {exc}")
        except Exception as exc:  # a frame it cannot read, or a handler's fault: this connection ends
            self._ended(f"client error: {exc!r}")

    def _ended(self, reason: Any) -> None:
        self._unregister()
        if self._gone is not None:
            self._gone.set()
        if self._closing:
            return
        self._closing = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._fail_pending(Closed(str(reason)))
        if self.on_close is not None:
            self.on_close(reason)

    def _data(self, chunk: bytes, now: float, second: int) -> None:
        """Handle every complete frame in what has come so far; keep the incomplete rest."""
        buf = self._buf + chunk if self._buf else chunk
        pos, size = 0, len(buf)
        on_move = self.on_move
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if size - start < 2:
                    break
                length = buf[start] << 8 | buf[start + 1]  # (int.from_bytes of a slice: 5% of a worker)
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                length = int.from_bytes(buf[start:start + 8], "big")
                start += 8
            if b1 & 0x80:  # servers never mask; skip a key if one came
                start += 4
            end = start + length
            if end > size:
                break
            pos = end
            if b0 == 0x81 and on_move is not None and buf.startswith(_MOVE, start) and not self._fragments:
                on_move(orjson.loads(buf[start + _MOVE_AT:end - 1]), now, second)  # a whole move event
            else:
                self._frame_in(b0 & 0x0F, bool(b0 & 0x80), buf[start:end], now)
        self._buf = buf[pos:] if pos < size else b""

    def _frame_in(self, opcode: int, fin: bool, payload: bytes, now: float) -> None:
        if opcode in (OP_TEXT, OP_CONT):
            if not fin or self._fragments:
                self._fragments.append(payload)
                if not fin:
                    return
                payload = b"".join(self._fragments)
                self._fragments = []
            self._packet(payload.decode(), now)
        elif opcode == OP_PING:
            self._send(frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            raise _ServerClosed(self._last_reason or "server closed the websocket")

    def _packet(self, text: str, now: float) -> None:
        kind = text[0]
        if kind == "4":  # Engine.IO message: a Socket.IO packet
            self._sio_packet(text[1], text[2:], now)
        elif kind == "2":  # ping
            self._send_text("3" + text[1:])
        elif kind == "1":  # Engine.IO close
            raise _ServerClosed(self._last_reason or "server closed the session")
        # "0" (open) carries the heartbeat; the server drives ping/pong, so nothing to do.

    def _sio_packet(self, kind: str, body: str, now: float) -> None:
        if not body.startswith(_NS_PREFIX):
            if body.startswith(NAMESPACE) and len(body) == len(NAMESPACE):
                body = ""
            else:
                return  # another namespace: not ours
        else:
            body = body[len(_NS_PREFIX):]
        i = 0
        while i < len(body) and body[i].isdigit():
            i += 1
        ack_id = int(body[:i]) if i else None
        data = orjson.loads(body[i:]) if i < len(body) else None
        if kind == "2":  # EVENT
            if data and data[0] == "session":
                self.session = data[1]
                self._connected.set(data[1])
            elif data and data[0] == "disconnect_reason":
                self._last_reason = data[1]
            if self.on_event is not None and data:
                self.on_event(data[0], data[1] if len(data) > 1 else None)
        elif kind == "3" and ack_id is not None:  # ACK
            waiter = self._acks.get(ack_id)
            if isinstance(waiter, AsyncResult):
                waiter.set(data[0] if data else None)
            elif waiter is not None:
                del self._acks[ack_id]
                waiter(ack_id, data[0] if data else None, None, now)
        elif kind == "4":  # CONNECT_ERROR
            message = data.get("message", "refused") if isinstance(data, dict) else str(data)
            self._connected.set_exception(Refused(message, data.get("data") if isinstance(data, dict) else None))
        elif kind == "1":  # DISCONNECT from the server
            raise _ServerClosed(self._last_reason or "server disconnected the namespace")
        # "0" (CONNECT ok) is followed by the ``session`` event, which is what connect() waits for.

    def _fail_pending(self, exc: Exception) -> None:
        if not self._connected.ready():
            self._connected.set_exception(exc)
        now = time.time()
        for ack_id, waiter in list(self._acks.items()):
            if isinstance(waiter, AsyncResult):
                if not waiter.ready():
                    waiter.set_exception(exc)
            elif self._acks.pop(ack_id, None) is not None:
                waiter(ack_id, None, exc, now)


class _ServerClosed(Exception):
    def __init__(self, reason: Any) -> None:
        super().__init__(str(reason))
        self.reason = reason
