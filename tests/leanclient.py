"""A lean Socket.IO client for ``/game`` over a bare websocket: hundreds fit in one event loop.

python-socketio's ``AsyncClient`` costs an HTTP session, several tasks and a few milliseconds
per connection; a connect storm of 50+ connections of one user, or 100 players moving a few
times a second, needs less. This client speaks Engine.IO v4 over the websocket transport only
(frames from :mod:`tests.rawclient`), answers pings, records every event it receives, resolves
acks, and can end in the three ways the tests need:

* :meth:`LeanClient.disconnect`: the client's own disconnect (``41/game``, then the close), which
  the gateway treats as final;
* :meth:`LeanClient.abort`: the TCP connection cut without a packet, as a network fault would (a
  drop); nothing received after the cut is recorded;
* the server's close: ``disconnect_reason`` (kept in :attr:`LeanClient.reasons`), then ``41/game``,
  on which the client ends the transport as stock clients do once their only namespace is gone
  (python-socketio's and socket.io-client's managers close the Engine.IO connection then).

Connecting is split in two (:meth:`LeanClient.open`, then :meth:`LeanClient.send_connect`) so
that a test can open every websocket first and then send all the Socket.IO CONNECT packets in
one turn of the event loop: the gateways then decide about the seats at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections import defaultdict
from typing import Any

from tests.rawclient import CLOSE, RawWebSocket, client_frame

NAMESPACE = "/game"
PING, PONG, TEXT = 0x9, 0xA, 0x1


class LeanClient:
    def __init__(self, ws: RawWebSocket, url: str) -> None:
        self.url = url
        self._ws = ws
        self.sid = ""
        self.session: dict[str, Any] | None = None  # the ``session`` event's payload
        self.connect_error: dict[str, Any] | None = None  # {"message", "data"} of a refusal
        self.reasons: list[dict[str, Any]] = []  # ``disconnect_reason`` payloads
        self.events: dict[str, list[Any]] = defaultdict(list)  # every other event, in order
        self.server_disconnected = False  # the server sent ``41/game``
        self.close_code: int | None = None  # the websocket close frame's code, if one came
        self.aborted = False  # cut by this side (abort): nothing after the cut is recorded
        self.closed = asyncio.Event()  # the transport is over, whoever ended it
        self.answered = asyncio.Event()  # ``session`` or ``connect_error`` came (or the transport ended)
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._next_ack = 0
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="leanclient-reader")

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, timeout: float = 10) -> LeanClient:
        """The websocket and the Engine.IO open packet; the namespace is not joined yet."""
        ws = await asyncio.wait_for(RawWebSocket.connect(url), timeout)
        client = cls(ws, url)
        try:
            await asyncio.wait_for(asyncio.shield(client._opened), timeout)
        except BaseException:
            client.abort()
            await client.aclose()
            raise
        return client

    def send_connect(self, auth: dict[str, Any]) -> None:
        """The Socket.IO CONNECT to ``/game`` (``auth`` as a stock client sends it)."""
        self._send("40" + NAMESPACE + "," + json.dumps(auth))

    async def wait_answer(self, timeout: float = 10) -> bool:
        """Wait for ``session`` (True) or a refusal or the end of the transport (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.answered.wait(), timeout)
        return self.session is not None

    @classmethod
    async def connect(cls, url: str, auth: dict[str, Any], timeout: float = 10) -> LeanClient:
        """Open, join ``/game`` and wait for the answer (check :attr:`session` / :attr:`connect_error`)."""
        client = await cls.open(url, timeout)
        client.send_connect(auth)
        await client.wait_answer(timeout)
        return client

    # -- using the connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Joined ``/game``, and neither side has ended it (a ``disconnect_reason`` may be pending)."""
        return self.session is not None and not self.closed.is_set() and not self.server_disconnected

    async def call(self, event: str, data: Any, timeout: float = 5) -> Any:
        """Emit with an ack; the ack's payload, or None if the connection ended or no ack came in time."""
        if not self.connected:
            return None
        self._next_ack += 1
        ack_id = self._next_ack
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = fut
        self._send("42" + NAMESPACE + "," + str(ack_id) + json.dumps([event, data]))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self._acks.pop(ack_id, None)

    async def disconnect(self, timeout: float = 5) -> None:
        """The client's own disconnect (final for the gateway): ``41/game``, Engine.IO close, then
        wait for the server to end the transport."""
        if not self.closed.is_set() and not self.aborted:
            self._send("41" + NAMESPACE + ",")
            self._send("1")
            self._close_frame()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout)
        await self.aclose()

    def abort(self) -> None:
        """Cut the TCP connection without a packet (a network fault). Synchronous: once it
        returns, nothing more is recorded."""
        self.aborted = True
        self._ws.close()
        self._finish()

    async def aclose(self) -> None:
        """End the transport if it is still up and wait for the reader task."""
        if not self.closed.is_set():
            self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._finish()

    # -- internals ------------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        if not self._ws.writer.is_closing():
            self._ws.writer.write(client_frame(text.encode()))

    def _close_frame(self) -> None:
        """The websocket close (1000): the server answers with its own and ends the TCP connection."""
        if not self._ws.writer.is_closing():
            self._ws.writer.write(client_frame(struct.pack("!H", 1000), CLOSE))

    def _finish(self) -> None:
        self.closed.set()
        self.answered.set()
        if not self._opened.done():
            self._opened.set_exception(ConnectionError("the transport ended before the Engine.IO open"))
            self._opened.exception()  # retrieved: nobody may be waiting for it
        for fut in self._acks.values():
            if not fut.done():
                fut.set_result(None)

    async def _read(self) -> None:
        reader = self._ws.reader
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await reader.readexactly(8))[0]
                payload = await reader.readexactly(n)
                if self.aborted:
                    return
                opcode = b0 & 0x0F
                if opcode == CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    return
                if opcode == PING:
                    self._ws.writer.write(client_frame(payload, PONG))
                elif opcode == TEXT:
                    self._packet(payload.decode())
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
        finally:
            if not self._ws.writer.transport.is_closing():
                self._ws.close()
            self._finish()

    def _packet(self, text: str) -> None:
        kind = text[:1]
        if kind == "0":
            if not self._opened.done():
                self._opened.set_result(None)
            return
        if kind == "2":  # Engine.IO ping
            self._send("3")
            return
        if kind != "4":
            return
        body = text[1:]
        head = body[:1]
        rest = body[1:]
        if rest.startswith(NAMESPACE):
            rest = rest[len(NAMESPACE):]
            rest = rest[1:] if rest.startswith(",") else rest
        if head == "0":  # CONNECT: {"sid"}
            self.sid = str(json.loads(rest).get("sid", "")) if rest else ""
        elif head == "1":  # DISCONNECT from the server: /game was the only namespace, so close
            self.server_disconnected = True
            self.answered.set()
            self._send("1")
            self._close_frame()
        elif head == "4":  # CONNECT_ERROR
            error = json.loads(rest)
            self.connect_error = error if isinstance(error, dict) else {"message": error}
            self.answered.set()
        elif head == "2":  # EVENT
            name, *args = json.loads(rest[_digits(rest):])
            data = args[0] if args else None
            if name == "session":
                self.session = data
                self.answered.set()
            elif name == "disconnect_reason":
                self.reasons.append(data)
            else:
                self.events[name].append(data)
        elif head == "3":  # ACK
            i = _digits(rest)
            fut = self._acks.get(int(rest[:i]))
            if fut is not None and not fut.done():
                args = json.loads(rest[i:])
                fut.set_result(args[0] if args else None)


def _digits(text: str) -> int:
    """How many leading characters of ``text`` are digits (an ack id)."""
    i = 0
    while i < len(text) and text[i].isdigit():
        i += 1
    return i
