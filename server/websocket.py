"""The websocket transport under Engine.IO, with permessage-deflate off by default.

python-engineio's aiohttp driver opens ``WebSocketResponse`` with aiohttp's defaults, which
accept permessage-deflate: every frame is then compressed (about a quarter of the gateway's CPU
under load) and each connection keeps a zlib context (~90 KB). Game moves are small; the
``websocket_compression`` setting turns it back on where bandwidth matters more than CPU.
"""

from __future__ import annotations

from typing import Any

from aiohttp.web import WebSocketResponse
from engineio.async_drivers.aiohttp import WebSocket as EngineioWebSocket


def websocket_driver(*, compress: bool) -> type[EngineioWebSocket]:
    class GameWebSocket(EngineioWebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=compress)
            await self._sock.prepare(request)
            self.environ = environ
            await self.handler(self)
            return self._sock

    return GameWebSocket


def install(eio_server: Any, *, compress: bool) -> None:
    """Swap the driver's websocket class (python-engineio looks it up in ``_async``)."""
    eio_server._async = {**eio_server._async, "websocket": websocket_driver(compress=compress)}
