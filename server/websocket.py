"""The websocket transport under Engine.IO: permessage-deflate off by default, and a handle on
each connection's TCP transport so that a network fault can be simulated.

python-engineio's aiohttp driver opens ``WebSocketResponse`` with aiohttp's defaults, which
accept permessage-deflate: every frame is then compressed (about a quarter of the gateway's CPU
under load) and each connection keeps a zlib context (~90 KB). Game moves are small; the
``websocket_compression`` setting turns it back on where bandwidth matters more than CPU.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.web import WebSocketResponse
from engineio.async_drivers.aiohttp import WebSocket as EngineioWebSocket

CLOSE_WAIT_S = 0.1


class Transports:
    """Engine.IO session id -> the TCP transport of its websocket, while it is open."""

    def __init__(self) -> None:
        self._by_eio_sid: dict[str, asyncio.BaseTransport] = {}

    def abort(self, eio_sid: str) -> bool:
        """Cut the TCP connection with no close frame and no disconnect packet."""
        transport = self._by_eio_sid.pop(eio_sid, None)
        if transport is None or transport.is_closing():
            return False
        transport.abort()  # type: ignore[attr-defined]
        return True

    def add(self, eio_sid: str, transport: asyncio.BaseTransport) -> None:
        self._by_eio_sid[eio_sid] = transport

    def discard(self, eio_sid: str, transport: asyncio.BaseTransport) -> None:
        if self._by_eio_sid.get(eio_sid) is transport:
            del self._by_eio_sid[eio_sid]


def websocket_driver(*, compress: bool, transports: Transports) -> type[EngineioWebSocket]:
    class GameWebSocket(EngineioWebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            # The close handshake waits CLOSE_WAIT_S at most for the peer's answer (aiohttp waits
            # 10 s by default): a blackholed client must turn into a drop within ping interval +
            # timeout, not 10 s later. A live client has the close frame long before.
            self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=compress,
                                           timeout=CLOSE_WAIT_S)
            await self._sock.prepare(request)
            self.environ = environ
            eio_sid = getattr(getattr(self.handler, "__self__", None), "sid", None)
            transport = request.transport
            if eio_sid and transport is not None:
                transports.add(eio_sid, transport)
            try:
                await self.handler(self)
            finally:
                if eio_sid and transport is not None:
                    transports.discard(eio_sid, transport)
            return self._sock

    return GameWebSocket


def install(eio_server: Any, *, compress: bool) -> Transports:
    """Swap the driver's websocket class (python-engineio looks it up in ``_async``)."""
    transports = Transports()
    eio_server._async = {**eio_server._async, "websocket": websocket_driver(compress=compress, transports=transports)}
    return transports
