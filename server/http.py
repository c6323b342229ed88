"""Plain HTTP beside the Socket.IO endpoint: health, readiness, metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics
from .rooms import RoomStore


def routes(*, metrics: Metrics, rooms: RoomStore, instance_id: str) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": instance_id})

    async def readyz(request: web.Request) -> web.Response:
        try:
            await rooms.ping()
        except Exception as exc:  # any failure of the store means "not ready"
            return web.json_response({"status": "unavailable", "instance": instance_id, "error": str(exc)},
                                     status=503)
        return web.json_response({"status": "ready", "instance": instance_id})

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)]
