"""Plain HTTP beside the Socket.IO endpoint: health, readiness, metrics and the admin API.

Health and readiness are served on the game listener; metrics and the admin API too, unless
``admin_port`` gives them a listener of their own (see ``create_app``), which serves health and
readiness as well.

The admin API answers for the whole cluster from any instance. It requires a bearer JWT whose
``role`` claim is ``admin`` and that is not revoked (checked as ``/game`` checks it, against the
cluster's revocations, on every call); errors are ``{"error": {"code", "message"}}`` with a
fitting status: 401 ``token_missing`` / ``token_invalid`` (also "token revoked") /
``token_expired``, 403 ``forbidden`` (not an admin), 400 ``bad_request``, 404 ``room_not_found``
(publish to a room without members), 413 ``payload_too_large`` (a published action over
``max_action_bytes``), 503 ``unavailable`` (the state store did not answer).

=======  =======================  ==================================================
GET      /admin/connections       ?user= &room= &instance= ; the registry, cluster-wide
GET      /admin/instances         the instances and whether their heartbeat is alive
POST     /admin/kick              {"user", "reason"}: close with 4503 everywhere
POST     /admin/drop              {"user", "block_s"}: cut the transport, refuse reconnects
POST     /admin/revoke            {"user", "jti"?, "exp"?}: revoke tokens, close what used them (4500)
POST     /admin/publish           {"room", "action"}: a server event, sent to the room as a ``move``
GET      /admin/live              the dashboard's stream: a snapshot, then deltas (``dashboard/``)
GET      /admin/ui                the dashboard's page (static; the token stays in its fragment)
=======  =======================  ==================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from .auth.revocation import Revocations
from .auth.tokens import Claims, Verifier
from .cluster.api import Cluster
from .cluster.bus import Bus
from .logs import Throttle, log
from .metrics import Metrics
from .protocol import codes
from .protocol.codes import AckCode
from .protocol.errors import ActionError, AdminError, AuthError, StoreUnavailable
from .protocol.payloads import MoveMsg, parse
from .state.registry import Registry
from .state.rooms import MoveEvent, RoomStore

logger = logging.getLogger("gamegw.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (room, publisher, action) -> the move as sent, or None when the room has no members
Publish = Callable[[str, str, dict[str, Any]], Awaitable[MoveEvent | None]]


def health_routes(*, rooms: RoomStore, bus: Bus, instance_id: str) -> list[web.RouteDef]:
    """``/healthz`` and ``/readyz``, public: they say ready or not and why as a code, never an
    address or an exception's text (those go to a throttled ``not_ready`` log line)."""
    throttle = Throttle()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": instance_id})

    def not_ready(reason: str, error: str) -> web.Response:
        throttle.log(logger, "not_ready", logging.WARNING, key=f"not_ready:{reason}", instance=instance_id,
                     reason=reason, error=error)
        return web.json_response({"status": "unavailable", "instance": instance_id, "reason": reason}, status=503)

    async def readyz(request: web.Request) -> web.Response:
        try:
            await rooms.ping()
        except Exception as exc:  # any failure of the store means "not ready"
            return not_ready("store_unreachable", f"{type(exc).__name__}: {exc}")
        if not await bus.probe():
            return not_ready("listener_deaf", "the pub/sub listener did not hear its loopback probe")
        return web.json_response({"status": "ready", "instance": instance_id})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def metrics_routes(*, metrics: Metrics) -> list[web.RouteDef]:
    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/metrics", metrics_view)]


def admin_routes(*, verifier: Verifier, revocations: Revocations, registry: Registry,
                 cluster: Cluster, publish: Publish, on_revoke: Callable[[str], None] | None = None
                 ) -> list[web.RouteDef]:
    """``on_revoke(user)`` hears of each revocation once it holds (open dashboards re-check their
    tokens); ``publish`` sends a server event to a room (``Gateway.publish``)."""
    throttle = Throttle()

    def admin(handler: Callable[[web.Request, Claims], Awaitable[Any]]) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                claims = await admin_claims(request, verifier, revocations)
                return web.json_response(await handler(request, claims))
            except AdminError as exc:
                return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)
            except (RedisError, OSError, TimeoutError) as exc:
                throttle.log(logger, "admin_unavailable", logging.WARNING, path=request.path, error=str(exc))
                return web.json_response({"error": {"code": codes.UNAVAILABLE.name,
                                                    "message": "the state store did not answer; retry"}}, status=503)

        return wrapped

    async def connections(request: web.Request, claims: Claims) -> Any:
        q = request.query
        conns = await registry.list(user_id=q.get("user") or None, room=q.get("room") or None,
                                    instance_id=q.get("instance") or None)
        return {"connections": [c.to_dict() for c in sorted(conns, key=lambda c: c.connected_at)]}

    async def instances(request: web.Request, claims: Claims) -> Any:
        return {"instances": await cluster.instances()}

    async def kick(request: web.Request, claims: Claims) -> Any:
        body = await _body(request)
        user = _user(body)
        reason = str(body.get("reason") or "")
        outcome = await cluster.kick(user, reason)
        log(logger, "admin_kick", by=claims.user_id, user=user, count=outcome.count, confirmed=outcome.confirmed)
        return outcome.to_dict()

    async def drop(request: web.Request, claims: Claims) -> Any:
        body = await _body(request)
        user = _user(body)
        block_s = body.get("block_s", 0)
        if not isinstance(block_s, (int, float)) or isinstance(block_s, bool) or not 0 <= block_s <= 3600:
            raise AdminError(400, "bad_request", "block_s must be a number of seconds from 0 to 3600")
        outcome = await cluster.drop(user, float(block_s))
        log(logger, "admin_drop", by=claims.user_id, user=user, count=outcome.count, block_s=block_s)
        return outcome.to_dict()

    async def revoke(request: web.Request, claims: Claims) -> Any:
        body = await _body(request)
        user = _user(body)
        jti = body.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise AdminError(400, "bad_request", "jti must be a non-empty string")
        exp = body.get("exp")
        if exp is not None and (not jti or not isinstance(exp, (int, float)) or isinstance(exp, bool)
                                or not math.isfinite(exp) or exp < 0):
            raise AdminError(400, "bad_request", "exp (with jti only) must be the token's exp in epoch seconds")
        outcome = await cluster.revoke(user, jti, None if exp is None else float(exp))
        if on_revoke is not None:
            on_revoke(user)
        log(logger, "admin_revoke", by=claims.user_id, user=user, jti=jti or "", exp=exp or "", count=outcome.count)
        return outcome.to_dict()

    async def publish_event(request: web.Request, claims: Claims) -> Any:
        """The move's checks where they apply to a server event (the room's name, an action
        object within ``max_action_bytes``); neither membership nor the game's rules."""
        body = await _body(request)
        try:
            msg = parse(MoveMsg, body)
            event = await publish(msg.room, claims.user_id, msg.action)
        except StoreUnavailable:
            raise AdminError(503, codes.UNAVAILABLE.name, "the state store did not answer; retry") from None
        except ActionError as exc:
            status = 413 if exc.code == AckCode.PAYLOAD_TOO_LARGE else 400
            raise AdminError(status, str(exc.code), exc.message) from None
        if event is None:
            raise AdminError(404, "room_not_found", f"room {msg.room!r} has no members")
        log(logger, "admin_publish", by=claims.user_id, room=msg.room, seq=event.seq)
        return {"ok": True, "room": msg.room, "seq": event.seq}

    return [web.get("/admin/connections", admin(connections)), web.get("/admin/instances", admin(instances)),
            web.post("/admin/kick", admin(kick)), web.post("/admin/drop", admin(drop)),
            web.post("/admin/revoke", admin(revoke)), web.post("/admin/publish", admin(publish_event))]


async def admin_claims(request: web.Request, verifier: Verifier, revocations: Revocations) -> Claims:
    """The caller's claims, verified and checked against the revocations exactly as ``/game`` does."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AdminError(401, codes.TOKEN_MISSING.name, "an admin bearer token is required")
    try:
        claims = verifier.verify(token.strip())
    except AuthError as exc:
        raise AdminError(401, exc.refusal.name, exc.detail) from None
    if await revocations.is_revoked(claims):
        raise AdminError(401, codes.TOKEN_INVALID.name, "token revoked")
    if not claims.is_admin:
        raise AdminError(403, "forbidden", "the token's role is not admin")
    return claims


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise AdminError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise AdminError(400, "bad_request", "the body must be a JSON object")
    return body


def _user(body: dict[str, Any]) -> str:
    user = body.get("user")
    if not isinstance(user, str) or not user:
        raise AdminError(400, "bad_request", "user must be a non-empty string")
    return user
