"""A stock python-socketio server, as the conformance suites' reference app, for comparison.

It is the Socket.IO suite's README app, written with python-socketio and nothing of gamegw:
namespaces ``/`` and ``/custom`` answer a CONNECT with an ``auth`` event echoing the auth
payload, ``message`` is echoed as ``message-back``, and ``message-with-ack`` acks its arguments.
``tests/integration/test_conformance.py`` runs both suites against it and prints its figures
beside gamegw's: the difference is what ``server/transport/eio.py`` fixes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio
from aiohttp import web


def make_app(*, ping_interval_s: float, ping_timeout_s: float, max_payload: int,
             server_class: type[socketio.AsyncServer] = socketio.AsyncServer) -> web.Application:
    sio = server_class(async_mode="aiohttp", ping_interval=ping_interval_s, ping_timeout=ping_timeout_s,
                               max_http_buffer_size=max_payload, cors_allowed_origins="*", namespaces=["/", "/custom"])

    tasks: set[asyncio.Task[None]] = set()

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None, *, namespace: str) -> None:
        # after the handler: python-socketio sends the CONNECT packet once it returns
        task = asyncio.create_task(sio.emit("auth", auth if auth is not None else {}, to=sid, namespace=namespace))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def main_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await connect(sid, environ, auth, namespace="/")

    async def custom_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await connect(sid, environ, auth, namespace="/custom")

    async def message(sid: str, *args: Any) -> None:
        await sio.emit("message-back", args, to=sid)

    async def message_with_ack(sid: str, *args: Any) -> tuple[Any, ...]:
        return args

    sio.on("connect", main_connect)
    sio.on("connect", custom_connect, namespace="/custom")
    sio.on("message", message)
    sio.on("message-with-ack", message_with_ack)
    app = web.Application()
    sio.attach(app)

    async def shutdown(app: web.Application) -> None:
        await sio.shutdown()

    app.on_cleanup.append(shutdown)
    return app
