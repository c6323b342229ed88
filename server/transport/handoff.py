"""The worker's end of sticky routing (:mod:`.sticky`): connections handed over by the parent.

The parent accepts each TCP connection, picks this worker for it and sends the socket over a
Unix socketpair (``SCM_RIGHTS``). :class:`HandoffSite` is an aiohttp site that takes them from
that channel and gives each to the app's server with ``loop.connect_accepted_socket`` (the
protocol factory a TCPSite's listener uses), so a handed connection is served exactly like an
accepted one. :func:`serve` is ``web.run_app`` for such a worker: the same lifecycle (startup,
SIGINT/SIGTERM, drain, cleanup), with this site in place of a listener. When the parent dies
(even by SIGKILL) the channel ends, and the worker drains and exits as on SIGTERM: no orphan
keeps serving connections that nobody routes to it any more.

The parent routes a connection by its first request only, so :func:`one_request_per_connection`
closes every plain HTTP exchange after its response (``Connection: close``): a long-polling
client's next request comes on a new connection and is routed again, never reaching this worker
with another worker's sid (one that still comes, e.g. pipelined, gets Engine.IO's usual 400).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..logs import log
from ..protocol.errors import StartupError

logger = logging.getLogger("gamegw.handoff")


@web.middleware
async def one_request_per_connection(request: web.Request,
                                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                     ) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.force_close()
        raise
    if not isinstance(response, web.WebSocketResponse):
        response.force_close()
    return response


class HandoffSite(web.BaseSite):
    """Serve the TCP connections that arrive, as file descriptors, on ``channel``."""

    __slots__ = ("_channel", "_name", "_serving")

    def __init__(self, runner: web.BaseRunner, channel: socket.socket, name: str) -> None:
        super().__init__(runner)
        self._channel = channel
        self._name = name
        self._serving: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)

    async def stop(self) -> None:
        self._close_channel()
        await super().stop()

    def _close_channel(self) -> None:
        if self._channel.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self._channel.close()

    def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        for _ in range(64):  # a batch, then the loop's other work
            try:
                message, fds, _, _ = socket.recv_fds(self._channel, 1, 1)
            except BlockingIOError:
                return
            except OSError as exc:
                log(logger, "channel_failed", logging.ERROR, error=exc.strerror or str(exc))
                self._close_channel()
                return
            if not message and not fds:  # the parent is gone: drain and exit, as on its SIGTERM
                log(logger, "parent_gone", logging.WARNING, note="the channel from the parent closed; stopping")
                self._close_channel()
                signal.raise_signal(signal.SIGTERM)
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(server, sock=sock))
                self._serving.add(task)
                task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[Any]) -> None:
        self._serving.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log(logger, "handoff_failed", logging.WARNING, error=str(task.exception()))


def channel_of(fd: int) -> socket.socket:
    """The Unix socket the parent passed as ``fd`` (``worker_handoff_fd``), checked."""
    hint = ("worker_handoff_fd is set by `gamectl serve --workers N` for its workers only; "
            "unset GAMEGW_WORKER_HANDOFF_FD to serve on a port of this process's own")
    try:
        channel = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"worker_handoff_fd: {fd} is not an open socket ({exc.strerror or exc})",
                           hint=hint) from None
    if (channel.family, channel.type) != (socket.AF_UNIX, socket.SOCK_SEQPACKET):
        channel.detach()  # not ours to close
        raise StartupError(f"worker_handoff_fd: {fd} is not the Unix socketpair of a `--workers` parent",
                           hint=hint)
    return channel


def serve(app: web.Application, channel: socket.socket, *, loop: asyncio.AbstractEventLoop, name: str,
          **runner_options: Any) -> None:
    """Run ``app`` on the connections that come over ``channel`` until SIGINT/SIGTERM, as
    ``web.run_app`` does with a listener (a failed startup raises, as there)."""

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=True, access_log=None, **runner_options)
        await runner.setup()
        try:
            await HandoffSite(runner, channel, name).start()
            await asyncio.Future()  # until a signal raises GracefulExit out of the loop
        finally:
            await runner.cleanup()

    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        for tasks in ({task}, None):  # main's cleanup first (it drains the clients), then what is left
            tasks = tasks or asyncio.all_tasks(loop)
            for pending in tasks:
                pending.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        channel.close()
