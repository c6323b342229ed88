"""``gamectl serve --workers N``: N gateway processes on one port, one cluster over Redis.

Each worker is a full instance (its own name, ``<instance_id>-w<k>``) that binds the port with
SO_REUSEPORT, so the kernel spreads incoming connections over the workers and every core is
used. Long-polling cannot work there (an Engine.IO session lives in one process and the kernel
does not route a session's requests back to it), so the workers accept websocket connections
only and refuse long-polling with a clear message; put a sticky load balancer in front of
single-worker instances where long-polling clients matter (see the README).

With an admin listener (``admin_port``), worker k listens for ``/admin/*`` and ``/metrics`` on
``admin_port + k - 1``, not on one shared SO_REUSEPORT port: metrics must be scraped from each
worker (the kernel would hand each scrape to any of them), and the admin API answers for the
whole cluster from any worker.

The parent supervises: SIGINT/SIGTERM are passed on to every worker (each drains and exits),
and if a worker dies, the others are stopped and the parent exits 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from gamegw.server.config import Settings


def run_workers(settings: Settings, workers: int, config: str | None) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    for k in range(workers):
        env = dict(os.environ)
        env.update({
            "GAMEGW_INSTANCE_ID": f"{settings.instance_id}-w{k + 1}",
            "GAMEGW_HOST": settings.host,
            "GAMEGW_PORT": str(settings.port),
            "GAMEGW_REDIS_URL": settings.redis_url,
            "GAMEGW_REUSE_PORT": "true",
            "GAMEGW_WEBSOCKET_ONLY": "true",
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
        procs.append(subprocess.Popen(args, env=env))

    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = False
    while any(p.poll() is None for p in procs):
        if not stopping and any(p.poll() not in (None, 0) for p in procs):
            failed = True
            forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return 1 if failed else 0
