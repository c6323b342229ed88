"""The ``/game`` namespace: thin handlers over auth, the registry and the room store.

Each client event goes through :meth:`Gateway._run`, which validates the payload against its
model, turns an :class:`ActionError` into the contract's error ack, counts the event and its
result, and times the handler. The handlers themselves only call the modules that own the
state.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs

import orjson
import socketio

from . import codes
from .auth import Claims, Verifier
from .codes import AckCode, Disconnect, LeftReason
from .config import Settings
from .errors import ActionError, AuthError
from .logs import log
from .manager import GameManager
from .metrics import Metrics
from .payloads import JoinMsg, LeaveMsg, MoveMsg, RefreshMsg, StateMsg, SyncMsg, parse
from .registry import Connection, Registry
from .rooms import RoomStore
from .websocket import Transports

if TYPE_CHECKING:
    from .bus import Bus
    from .cluster import Cluster

NAMESPACE = "/game"
TOUCH_EVERY_S = 1.0

logger = logging.getLogger("gamegw.gateway")
Ack = dict[str, Any]


@dataclass
class Conn:
    """What this instance knows of one of its own connections."""

    sid: str
    claims: Claims
    address: str
    session_id: str
    rooms: set[str] = field(default_factory=set)
    touched: float = 0.0
    closing: Disconnect | None = None  # set when the server closes the connection on purpose
    dropped: bool = False  # set when the server cut the transport to simulate a network fault


def token_from(auth: Any, environ: Mapping[str, Any]) -> str:
    """Credentials, first found wins: auth payload, Authorization header, query string."""
    if isinstance(auth, dict) and isinstance(auth.get("token"), str) and auth["token"]:
        return str(auth["token"])
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = parse_qs(str(environ.get("QUERY_STRING", ""))).get("token")
    return values[0] if values else ""


def address_of(environ: Mapping[str, Any]) -> str:
    request = environ.get("aiohttp.request")
    remote = getattr(request, "remote", None)
    return str(remote or environ.get("REMOTE_ADDR", ""))


class Gateway(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        *,
        verifier: Verifier,
        registry: Registry,
        rooms: RoomStore,
        metrics: Metrics,
        transports: Transports,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(NAMESPACE)
        self.settings = settings
        self.verifier = verifier
        self.registry = registry
        self.rooms = rooms
        self.metrics = metrics
        self.transports = transports
        self.clock = clock
        self.conns: dict[str, Conn] = {}
        # wired by create_app once they exist (they need the gateway too)
        self.bus: Bus
        self.cluster: Cluster
        self._handlers: dict[str, Callable[[Conn, Any], Awaitable[Ack]]] = {
            "join": self._join,
            "leave": self._leave,
            "move": self._move,
            "sync": self._sync,
            "state": self._state,
            "refresh": self._refresh,
        }

    @property
    def manager(self) -> GameManager:
        manager: GameManager = self.server.manager
        return manager

    # -- connection lifecycle -------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        address = address_of(environ)
        try:
            claims = self.verifier.verify(token_from(auth, environ))
        except AuthError as exc:
            self._refuse(sid, address, exc.refusal, exc.detail)
        if await self.cluster.is_blocked(claims.user_id):
            # simulate-drop --block: behave like an unreachable network, not like a refusal
            log(logger, "blocked", user=claims.user_id, sid=sid, address=address)
            await self._cut(sid)
            raise socketio.exceptions.ConnectionRefusedError("unavailable", codes.UNAVAILABLE.data("blocked"))
        await self._enforce_user_limit(sid, claims.user_id, address)
        now = self.clock()
        conn = Conn(sid=sid, claims=claims, address=address, session_id=uuid.uuid4().hex, touched=now)
        self.conns[sid] = conn
        await self.registry.add(Connection(
            sid=sid, user_id=claims.user_id, instance_id=self.settings.instance_id, address=address,
            connected_at=now, last_seen=now, session_id=conn.session_id,
            transport=str(environ.get("HTTP_UPGRADE", "") or "polling").lower(),
        ))
        self.metrics.connects.inc()
        self.metrics.connections.inc()
        log(logger, "connect", user=claims.user_id, sid=sid, address=address, session=conn.session_id)

    def _refuse(self, sid: str, address: str, refusal: codes.Refusal, detail: str) -> NoReturn:
        self.metrics.refusals.labels(refusal.name).inc()
        log(logger, "refuse", sid=sid, address=address, code=refusal.code, reason=refusal.name, detail=detail)
        raise socketio.exceptions.ConnectionRefusedError(refusal.name, refusal.data())

    async def _enforce_user_limit(self, sid: str, user_id: str, address: str) -> None:
        sids = await self.registry.user_sids(user_id)
        excess = len(sids) - self.settings.max_connections_per_user + 1
        if excess <= 0:
            return
        if self.settings.on_connection_limit == "refuse":
            self._refuse(sid, address, codes.CONNECTION_LIMIT,
                         f"user has {len(sids)} of {self.settings.max_connections_per_user} connections")
        for old in sids[:excess]:
            await self.cluster.close_sid(old, codes.SESSION_REPLACED)

    async def on_connected(self, sid: str) -> None:
        """Runs once the CONNECT packet is queued: the ``session`` event comes first."""
        conn = self.conns.get(sid)
        if conn is None:
            return
        await self.emit("session", {
            "sid": sid,
            "user": conn.claims.user_id,
            "session_id": conn.session_id,
            "resumed": False,
            "rooms": sorted(conn.rooms),
            "grace_s": self.settings.grace_s,
            "heartbeat": {"interval_s": self.settings.ping_interval_s, "timeout_s": self.settings.ping_timeout_s},
        }, to=sid)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        conn = self.conns.pop(sid, None)
        if conn is None:
            return
        closing = conn.closing
        if closing is codes.KICKED:
            left = LeftReason.KICKED
        elif conn.dropped:
            left = LeftReason.TIMEOUT
        elif reason == self.server.reason.CLIENT_DISCONNECT or closing is not None:
            left = LeftReason.LEFT
        else:  # a drop; without a session to wait for, grace ends at once
            left = LeftReason.TIMEOUT
        for room in sorted(conn.rooms):
            await self._leave_room(conn, room, left)
        await self.registry.remove(sid)
        self.metrics.connections.dec()
        cause = closing.reason if closing else "simulated_drop" if conn.dropped else reason.replace(" ", "_")
        self.metrics.disconnects.labels(cause).inc()
        log(logger, "disconnect", user=conn.claims.user_id, sid=sid, address=conn.address, reason=cause)

    async def close(self, sid: str, why: Disconnect, message: str = "") -> bool:
        """Close one local connection on purpose: ``disconnect_reason`` first, then the close."""
        conn = self.conns.get(sid)
        if conn is None or conn.closing is not None:
            return False
        conn.closing = why
        payload = why.payload()
        if message:
            payload["message"] = message
        await self.emit("disconnect_reason", payload, to=sid)
        await self.server.disconnect(sid, namespace=NAMESPACE)
        return True

    def local_sids(self, user_id: str) -> list[str]:
        return [sid for sid, conn in self.conns.items() if conn.claims.user_id == user_id]

    async def kick_local(self, user_id: str, message: str = "") -> int:
        closed = 0
        for sid in self.local_sids(user_id):
            closed += await self.close(sid, codes.KICKED, message)
        if closed:
            log(logger, "kick", user=user_id, connections=closed, message=message)
        return closed

    async def drop_local(self, user_id: str) -> int:
        """Cut the user's connections as a network fault would: no packet, the TCP just ends."""
        dropped = 0
        for sid in self.local_sids(user_id):
            conn = self.conns[sid]
            if conn.dropped or conn.closing is not None:
                continue
            conn.dropped = True
            await self._cut(sid)
            dropped += 1
        if dropped:
            log(logger, "simulate_drop", user=user_id, connections=dropped)
        return dropped

    async def _cut(self, sid: str) -> None:
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None or self.transports.abort(eio_sid):
            return
        # long-polling has no lasting TCP connection: forget the session without a CLOSE
        # packet, so the client's next poll fails as if the server had gone away
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is not None:
            await socket.close(wait=False, abort=True)

    async def send_to_user(self, user_id: str, event: str, data: Any) -> int:
        """Send an event to every connection the user has on this instance."""
        sent = 0
        for sid in await self.registry.user_sids(user_id):
            if sid in self.conns:
                await self.emit(event, data, to=sid)
                sent += 1
        return sent

    # -- events ----------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        data = args[1] if len(args) > 1 else None
        return await self._run(event, sid, data)

    async def _run(self, event: str, sid: str, data: Any) -> Ack:
        started = time.perf_counter()
        handler = self._handlers.get(event)
        label = event if handler is not None else "unknown"
        self.metrics.events.labels(label).inc()
        conn = self.conns.get(sid)
        try:
            if handler is None:
                raise ActionError(AckCode.BAD_REQUEST, f"unknown event {event!r}")
            if conn is None:
                raise ActionError(AckCode.UNAVAILABLE, "connection is closing")
            now = self.clock()
            if now - conn.touched >= TOUCH_EVERY_S:
                conn.touched = now
                await self.registry.touch(sid, now)
            ack = await handler(conn, data)
            result = "ok"
        except ActionError as exc:
            ack = exc.ack()
            result = str(exc.code)
        except Exception:
            logger.exception("handler failed", extra={"gamegw_fields": {"event_name": event, "sid": sid}})
            ack = ActionError(AckCode.INTERNAL, "internal error").ack()
            result = str(AckCode.INTERNAL)
        self.metrics.acks.labels(label, result).inc()
        self.metrics.handler_seconds.labels(label).observe(time.perf_counter() - started)
        return ack

    async def _join(self, conn: Conn, data: Any) -> Ack:
        room = parse(JoinMsg, data).room
        user_id = conn.claims.user_id
        joined = await self.rooms.join(room, user_id, conn.sid)
        if room not in conn.rooms:
            conn.rooms.add(room)
            await self.server.enter_room(conn.sid, room, namespace=NAMESPACE)
            await self.registry.add_room(conn.sid, room)
        if joined.first:
            await self.bus.emit_room(room, "player_joined", {"room": room, "user": user_id}, skip_sid=conn.sid)
        return {"ok": True, "room": room, "seq": joined.seq, "members": joined.members}

    async def _leave(self, conn: Conn, data: Any) -> Ack:
        room = parse(LeaveMsg, data).room
        self._member(conn, room)
        await self._leave_room(conn, room, LeftReason.LEFT)
        return {"ok": True}

    async def _leave_room(self, conn: Conn, room: str, reason: LeftReason) -> None:
        conn.rooms.discard(room)
        await self.server.leave_room(conn.sid, room, namespace=NAMESPACE)
        await self.registry.remove_room(conn.sid, room)
        if await self.rooms.leave(room, conn.claims.user_id, conn.sid):
            await self.bus.emit_room(room, "player_left",
                                     {"room": room, "user": conn.claims.user_id, "reason": str(reason)})

    async def _move(self, conn: Conn, data: Any) -> Ack:
        msg = parse(MoveMsg, data)
        self._member(conn, msg.room)
        try:
            action_bytes = orjson.dumps(msg.action)
        except TypeError:
            raise ActionError(AckCode.BAD_REQUEST, "action must be plain JSON") from None
        if len(action_bytes) > self.settings.max_action_bytes:
            raise ActionError(AckCode.PAYLOAD_TOO_LARGE,
                              f"action is {len(action_bytes)} bytes; the limit is {self.settings.max_action_bytes}")
        action_json = action_bytes.decode()
        event = await self.rooms.move(msg.room, conn.claims.user_id, msg.action, action_json,
                                      int(self.clock() * 1000))
        await self.bus.publish_move(msg.room, event)
        self.metrics.moves.inc()
        return {"ok": True, "seq": event.seq}

    async def _sync(self, conn: Conn, data: Any) -> Ack:
        msg = parse(SyncMsg, data)
        self._member(conn, msg.room)
        events, complete = await self.rooms.events_after(msg.room, msg.after_seq)
        return {"ok": True, "events": [e.wire() for e in events], "complete": complete}

    async def _state(self, conn: Conn, data: Any) -> Ack:
        room = parse(StateMsg, data).room
        self._member(conn, room)
        seq, state = await self.rooms.state(room)
        return {"ok": True, "seq": seq, "state": state}

    async def _refresh(self, conn: Conn, data: Any) -> Ack:
        token = parse(RefreshMsg, data).token
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            raise ActionError(AckCode.BAD_REQUEST, f"{exc.refusal.name}: {exc.detail}") from None
        if claims.user_id != conn.claims.user_id:
            raise ActionError(AckCode.FORBIDDEN, "the token is for another user")
        conn.claims = claims
        return {"ok": True, "exp": claims.exp}

    @staticmethod
    def _member(conn: Conn, room: str) -> None:
        if room not in conn.rooms:
            raise ActionError(AckCode.NOT_IN_ROOM, f"not in room {room!r}")
