"""``gamectl serve --workers N``: N gateway processes behind one port, one cluster over Redis.

Each worker is a full instance (its own name, ``<instance_id>-w<k>``). The parent owns the
listening socket and routes every accepted connection to one worker (sticky routing,
server/transport/sticky.py): a request that carries an Engine.IO sid goes to the worker that made
it (each worker's sids start with its number), anything else round-robin. So every transport
works, long-polling included: a polling session's requests all reach the process that holds it.
The connection itself is handed over (SCM_RIGHTS on a Unix socketpair per worker), so the parent
never touches the bytes after the request line.

With an admin listener (``admin_port``), worker k listens for ``/admin/*`` and ``/metrics`` on
``admin_port + k - 1``: metrics must be scraped from each worker, and the admin API answers for
the whole cluster from any worker.

The parent supervises: SIGINT/SIGTERM close the listener (new connections are refused) and are
passed on to every worker (each drains and exits); if a worker dies, the others are stopped and
the parent exits 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

from gamegw.server.config import Settings
from gamegw.server.startup import listen
from gamegw.server.transport.sticky import Router

SUPERVISE_INTERVAL_S = 0.2


def run_workers(settings: Settings, workers: int, config: str | None) -> int:
    """Start the workers and route to them until they have all exited; the exit code.

    Raises :class:`StartupError` when the port cannot be bound (before any worker starts)."""
    listeners = listen(settings.host, settings.port)
    channels: list[socket.socket] = []
    procs: list[subprocess.Popen[bytes]] = []
    for k in range(workers):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        channels.append(ours)
        env = dict(os.environ)
        env.update({
            "GAMEGW_INSTANCE_ID": f"{settings.instance_id}-w{k + 1}",
            "GAMEGW_HOST": settings.host,
            "GAMEGW_PORT": str(settings.port),
            "GAMEGW_REDIS_URL": settings.redis_url,
            "GAMEGW_WORKER_INDEX": str(k + 1),
            "GAMEGW_WORKER_HANDOFF_FD": str(theirs.fileno()),
        })
        if settings.admin_port is not None:
            # one admin listener per worker (admin_port + k - 1; 0: each a free port): /metrics must
            # reach one given worker, and the admin API answers for the cluster from any of them
            env["GAMEGW_ADMIN_HOST"] = settings.admin_host
            env["GAMEGW_ADMIN_PORT"] = str(settings.admin_port + k if settings.admin_port else 0)
        if settings.dev:
            env.setdefault("GAMEGW_PROFILE", "dev")
            env.setdefault("GAMEGW_JWT_SECRET", settings.jwt_secret)
        args = [sys.executable, "-m", "gamegw.gamectl.main", "serve"] + (["--config", config] if config else [])
        with theirs:
            procs.append(subprocess.Popen(args, env=env, pass_fds=[theirs.fileno()]))
    router = Router(listeners, channels, peek_timeout_s=settings.handshake_timeout_s or 75.0)
    loop: asyncio.AbstractEventLoop
    try:  # a connect storm goes through the parent's accept loop: uvloop when installed, as the workers
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_supervise(procs, router))
    finally:
        loop.close()


async def _supervise(procs: list[subprocess.Popen[bytes]], router: Router) -> int:
    loop = asyncio.get_running_loop()
    stopping = False

    def forward(signum: int) -> None:
        nonlocal stopping
        stopping = True
        router.stop_accepting()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, forward, signum)
    router.start()
    failed = False
    try:
        while any(p.poll() is None for p in procs):
            if not stopping and any(p.poll() is not None for p in procs):
                failed = True  # a worker died: its share of the connections would go nowhere
                forward(signal.SIGTERM)
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await router.aclose()
    return 1 if failed else 0
