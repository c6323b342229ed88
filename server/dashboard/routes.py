"""The dashboard's HTTP side, on the admin listener beside the admin API.

``GET /admin/ui`` is the page and ``/admin/ui/static/*`` its modules and style: static files of
this package, served with a strict Content-Security-Policy and without any data, so they need
no token. The page reads its admin token from its URL fragment (``#token=...``, never sent to a
server, so never in an access log) and sends it as ``Authorization: Bearer`` to:

``GET /admin/live``: ``text/event-stream`` read with ``fetch()`` (``EventSource`` cannot send
the header). Events: ``snapshot`` once (``{now, instance, instances, connections, rooms:
{room: seq}}``), then ``delta`` (a list of the feed's deltas, see ``feed.py``) as things
change. Every ``check_s`` (and at once after a revocation) the stream checks its token again
as the admin API does; an expired or revoked token gets ``signed_out`` (``{code, message}``)
and the stream ends. ``resync`` (``{reason}``) ends a stream the page should open again (the
feed lost Redis, the page fell behind, the instance stops).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from ..auth.revocation import Revocations
from ..auth.tokens import Claims, Verifier
from ..cluster.api import Cluster
from ..http import admin_claims
from ..protocol import codes
from ..protocol.errors import AdminError
from ..state.registry import Registry
from ..state.rooms import RoomStore
from .feed import Feed, FeedEnded

STATIC = {"app.js": "text/javascript", "view.js": "text/javascript", "stream.js": "text/javascript",
          "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
KEEPALIVE_S = 10.0


def asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def dashboard_routes(*, verifier: Verifier, revocations: Revocations, registry: Registry, rooms: RoomStore,
                     cluster: Cluster, feed: Feed, instance_id: str, leeway_s: float, check_s: float = 1.0,
                     clock: Callable[[], float] = time.time) -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=asset("index.html"), content_type="text/html", charset="utf-8",
                            headers=SECURITY_HEADERS)

    async def slash(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/admin/ui")  # the page's links are relative to /admin/ui

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=asset(name), content_type=STATIC[name], charset="utf-8", headers=SECURITY_HEADERS)

    async def snapshot() -> dict[str, Any]:
        conns = await registry.list()
        names = sorted({room for conn in conns for room in conn.rooms})
        seqs: dict[str, int] = {}
        for start in range(0, len(names), 200):
            chunk = names[start:start + 200]
            seqs.update(zip(chunk, await asyncio.gather(*(rooms.seq(r) for r in chunk)), strict=True))
        return {"now": clock(), "instance": instance_id, "instances": await cluster.instances(),
                "connections": [c.to_dict() for c in sorted(conns, key=lambda c: c.connected_at)], "rooms": seqs}

    async def signed_out(claims: Claims) -> dict[str, str] | None:
        """Why the stream's token no longer holds, as the admin API would say it; None if it does."""
        if claims.exp + leeway_s <= clock():
            return {"code": codes.TOKEN_EXPIRED.name, "message": "token expired"}
        if await revocations.is_revoked(claims):
            return {"code": codes.TOKEN_INVALID.name, "message": "token revoked"}
        return None

    async def live(request: web.Request) -> web.StreamResponse:
        try:
            claims = await admin_claims(request, verifier, revocations)
            sub = await feed.subscribe()
        except AdminError as exc:
            return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)
        except (RedisError, OSError, TimeoutError):
            return web.json_response({"error": {"code": codes.UNAVAILABLE.name,
                                                "message": "the state store did not answer; retry"}}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no",
                                               **SECURITY_HEADERS})
        try:
            await response.prepare(request)

            async def send(event: str, data: Any) -> None:
                await response.write(b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

            await send("snapshot", await snapshot())
            last_write = next_check = time.monotonic()
            next_check += check_s
            while True:
                try:
                    batch = await sub.next(next_check - time.monotonic())
                except FeedEnded as ended:
                    await send("resync", {"reason": ended.reason})
                    break
                now = time.monotonic()
                if batch:
                    await send("delta", batch)
                    last_write = now
                    if any(d.get("t") == "revoked" for d in batch):
                        next_check = now
                if now >= next_check:
                    why = await signed_out(claims)
                    if why is not None:
                        await send("signed_out", why)
                        break
                    next_check = now + check_s
                    if now - last_write >= KEEPALIVE_S:  # a closed page shows as a failed write
                        await response.write(b": keepalive\n\n")
                        last_write = now
        except (ConnectionError, RedisError, TimeoutError):
            pass  # the page went away, or the store did not answer: the page opens the stream again
        finally:
            feed.unsubscribe(sub)
        return response

    return [web.get("/admin/ui", page), web.get("/admin/ui/", slash),
            web.get("/admin/ui/static/{name}", static), web.get("/admin/live", live)]
