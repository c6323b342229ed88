#!/usr/bin/env python3
"""A backend hook that says yes to everything: ``{"ok": true}`` to every POST.

The "hook" candidate of ``loadtests/peer_bench.sh hooks`` runs it beside the gateway (see
``serve_with_hook.sh``), so that the figures show what asking a hook on every move costs the
gateway: the HTTP round trip and the JSON, not a backend's own work. Usage:
``python loadtests/hook_server.py --port 9000`` (127.0.0.1 only).
"""

from __future__ import annotations

import argparse

from aiohttp import web

ANSWER = b'{"ok":true}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
