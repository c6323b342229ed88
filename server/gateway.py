"""The ``/game`` namespace: thin handlers over auth, the registry and the room store.

Each client event goes through :meth:`Gateway._run`, which validates the payload against its
model, turns an :class:`ActionError` into the contract's error ack, counts the event and its
result, and times the handler. The handlers themselves only call the modules that own the
state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs

import orjson
import socketio
from redis.exceptions import RedisError

from . import codes
from .auth import Claims, Verifier
from .codes import AckCode, Disconnect, LeftReason
from .config import Settings
from .errors import ActionError, AuthError, StoreUnavailable
from .expiry import TokenClock
from .guards import Guards, address_of
from .limits import Bucket, Limit
from .logs import log, stop_task
from .manager import GameManager
from .metrics import Metrics
from .payloads import JoinMsg, LeaveMsg, MoveMsg, RefreshMsg, StateMsg, SyncMsg, parse
from .registry import Connection, Registry
from .revocation import Revocations
from .rooms import RoomStore
from .sessions import Session, SessionStore
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
    session: Session
    resumed: bool = False  # the connection took back a session (after a drop, or from a stale connection)
    from_grace: bool = False  # ... and that session had dropped (the rooms saw player_disconnected)
    last_seq: dict[str, int] = field(default_factory=dict)  # auth.last_seq: what the client has seen
    touched: float = 0.0
    closing: Disconnect | None = None  # set when the server closes the connection on purpose
    cut: str = ""  # why the server cut the transport without a word: simulated_drop, slow_consumer
    bucket: Bucket | None = None  # events per second
    abuse: Bucket | None = None  # rate_limited acks per abuse_window_s
    limited: bool = False  # the last event was refused with rate_limited

    @property
    def rooms(self) -> dict[str, int]:
        return self.session.rooms


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


def _last_seq(auth: Any) -> dict[str, int]:
    """``auth.last_seq = {"<room>": <seq>}``: what a resuming client has already seen."""
    raw = auth.get("last_seq") if isinstance(auth, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {str(room): seq for room, seq in raw.items()
            if isinstance(room, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0}


class Gateway(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        *,
        verifier: Verifier,
        registry: Registry,
        rooms: RoomStore,
        sessions: SessionStore,
        revocations: Revocations,
        metrics: Metrics,
        transports: Transports,
        guards: Guards,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(NAMESPACE)
        self.settings = settings
        self.verifier = verifier
        self.registry = registry
        self.rooms = rooms
        self.sessions = sessions
        self.revocations = revocations
        self.metrics = metrics
        self._grace_task: asyncio.Task[None] | None = None
        self._store_logged = 0.0
        self._store_errors = 0
        self._background: set[asyncio.Task[Any]] = set()
        self.expiry = TokenClock(warn_s=settings.token_expiring_s, leeway_s=settings.jwt_leeway_s, clock=clock,
                                 on_warn=self._token_expiring, on_expire=self._token_expired)
        self.transports = transports
        self.guards = guards
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
        if not self.guards.connect_allowed(environ):
            self._refuse(sid, address, codes.RATE_LIMITED, "too many connection attempts from this address")
        try:
            claims = self.verifier.verify(token_from(auth, environ))
        except AuthError as exc:
            if exc.limit is not None:
                self.guards.hit(exc.limit, address=address, max_bytes=self.settings.jwt_max_token_bytes)
            self._refuse(sid, address, exc.refusal, exc.detail)
        if await self.revocations.is_revoked(claims):
            self._refuse(sid, address, codes.TOKEN_INVALID, "token revoked")
        user_id = claims.user_id
        if await self.cluster.is_blocked(user_id):
            # simulate-drop --block: behave like an unreachable network, not like a refusal
            log(logger, "blocked", user=user_id, sid=sid, address=address)
            await self._cut(sid)
            raise socketio.exceptions.ConnectionRefusedError("unavailable", codes.UNAVAILABLE.data("blocked"))
        now = self.clock()
        iid = self.settings.instance_id
        session, previous_sid, replaced = await self._find_session(sid, user_id, address, now)
        if session is None:
            session = Session(session_id=uuid.uuid4().hex, user_id=user_id, sid=sid, instance_id=iid, created_at=now)
        from_grace = session.state == "grace" or (previous_sid is not None and not replaced)
        session.sid, session.instance_id, session.state = sid, iid, "connected"
        session.dropped_at = session.grace_until = None
        await self.sessions.put(session)
        conn = Conn(sid=sid, claims=claims, address=address, session=session, resumed=previous_sid is not None,
                    from_grace=from_grace, last_seq=_last_seq(auth), touched=now)
        if self.settings.max_events_per_s > 0:
            conn.bucket = Bucket(self.settings.max_events_per_s, self.settings.max_events_burst, time.perf_counter())
            if self.settings.abuse_max_rate_limited > 0 and self.settings.abuse_window_s > 0:
                most = self.settings.abuse_max_rate_limited
                conn.abuse = Bucket(most / self.settings.abuse_window_s, most, time.perf_counter())
        if from_grace and previous_sid is not None:
            await self.registry.remove(previous_sid)
        self.conns[sid] = conn
        await self.registry.add(Connection(
            sid=sid, user_id=user_id, instance_id=iid, address=address, connected_at=now, last_seen=now,
            session_id=session.session_id, transport=str(environ.get("HTTP_UPGRADE", "") or "polling").lower(),
            resumed=conn.resumed, rooms=set(session.rooms)))
        for old_sid in replaced:
            await self.cluster.close_sid(old_sid, codes.SESSION_REPLACED)
        self.metrics.connects.inc()
        self.metrics.connections.inc()
        log(logger, "connect", user=user_id, sid=sid, address=address, session=session.session_id,
            resumed=conn.resumed)

    async def _find_session(self, sid: str, user_id: str, address: str, now: float
                            ) -> tuple[Session | None, str | None, list[str]]:
        """The session this connection continues, if any: (session, its previous sid, sids to replace).

        A session in grace is claimed (the newest drop first). Otherwise, at the per-user limit,
        the ``replace`` policy takes over the oldest live session (its connection is closed with
        4504 and the rooms see nothing), and ``refuse`` refuses.
        """
        sessions = await self.sessions.of_user(user_id)
        for candidate in sorted((s for s in sessions if s.state == "grace"),
                                key=lambda s: s.dropped_at or 0, reverse=True):
            claimed = await self.sessions.claim(candidate.session_id, sid, self.settings.instance_id)
            if claimed is not None:
                self.metrics.resumes.labels("resumed").inc()
                self.metrics.resume_seconds.observe(max(0.0, now - (candidate.dropped_at or now)))
                return claimed, candidate.sid, []
            self.metrics.resumes.labels("too_late").inc()
        live = [s for s in sessions if s.state == "connected"]
        excess = len(live) - self.settings.max_connections_per_user + 1
        if excess <= 0:
            return None, None, []
        self.guards.hit(Limit.CONNECTIONS_PER_USER, user=user_id, address=address, live=len(live),
                        policy=self.settings.on_connection_limit)
        if self.settings.on_connection_limit == "refuse":
            self._refuse(sid, address, codes.CONNECTION_LIMIT,
                         f"user has {len(live)} of {self.settings.max_connections_per_user} connections")
        victims = live[:excess]
        return victims[0], victims[0].sid, [v.sid for v in victims]

    def _refuse(self, sid: str, address: str, refusal: codes.Refusal, detail: str) -> NoReturn:
        self.metrics.refusals.labels(refusal.name).inc()
        # throttled: refusals are what a flood of forged tokens or handshakes turns into
        self.guards.throttle.log(logger, "refuse", key=f"refuse:{refusal.name}", sid=sid, address=address,
                                 code=refusal.code, reason=refusal.name, detail=detail)
        raise socketio.exceptions.ConnectionRefusedError(refusal.name, refusal.data())

    async def on_connected(self, sid: str) -> None:
        """Runs once the CONNECT packet is queued: ``session`` first, then the replay, then live."""
        conn = self.conns.get(sid)
        if conn is None:
            return
        user_id = conn.claims.user_id
        # ``session`` goes out before the connection is in any room, so nothing can precede it;
        # a resuming connection is then paused while it enters its rooms and gets the replay
        await self.emit("session", {
            "sid": sid,
            "user": user_id,
            "session_id": conn.session.session_id,
            "resumed": conn.resumed,
            "rooms": sorted(conn.rooms),
            "grace_s": self.settings.grace_s,
            "heartbeat": {"interval_s": self.settings.ping_interval_s, "timeout_s": self.settings.ping_timeout_s},
        }, to=sid)
        self.expiry.arm(sid, conn.claims.exp)
        if not conn.resumed:
            return
        self.manager.pause(sid)
        replayed: dict[str, int] = {}
        try:
            for room in conn.rooms:
                await self.rooms.attach(room, sid)
                await self.server.enter_room(sid, room, namespace=NAMESPACE)
            eio_sid = self.manager.eio_sid_from_sid(sid, NAMESPACE)
            for room, after in conn.last_seq.items():
                if room not in conn.rooms:
                    continue
                events, _complete = await self.rooms.events_after(room, after)
                pkts = [p for e in events for p in self.manager.encode_json(NAMESPACE, "move", e.json)]
                for p in pkts:
                    await self.server._send_eio_packet(eio_sid, p)
                replayed[room] = events[-1].seq if events else after
                self.metrics.replayed.inc(len(events))
        except (RedisError, OSError, TimeoutError) as exc:
            # the resume could not be finished: the client comes back and tries again (a drop)
            self._store_trouble("resume", exc)
            self.manager.paused.pop(sid, None)
            self.close_soon(conn, codes.SHUTDOWN, "state store unavailable, reconnect")
            return
        finally:
            if sid in self.manager.paused:
                await self.manager.unpause(NAMESPACE, sid, replayed)
        if conn.from_grace:
            for room in sorted(conn.rooms):
                await self.bus.emit_room(room, "player_reconnected", {"room": room, "user": user_id}, skip_sid=sid)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        conn = self.conns.pop(sid, None)
        if conn is None:
            return
        self.manager.paused.pop(sid, None)
        self.expiry.disarm(sid)
        self.metrics.connections.dec()
        closing = conn.closing
        cause = closing.reason if closing else conn.cut or reason.replace(" ", "_")
        self.metrics.disconnects.labels(cause).inc()
        log(logger, "disconnect", user=conn.claims.user_id, sid=sid, address=conn.address, reason=cause)
        try:
            await self._disconnected(conn, sid, closing, cause, reason)
        except (RedisError, OSError, TimeoutError) as exc:
            # Redis is away: the cluster's recovery turns this connection into a drop once it is back
            self._store_trouble("disconnect", exc)

    async def _disconnected(self, conn: Conn, sid: str, closing: Disconnect | None, cause: str, reason: str) -> None:
        for room in conn.rooms:
            await self.rooms.detach(room, sid)
        current = await self.sessions.get(conn.session.session_id)
        if current is None or current.sid != sid:  # taken over by a newer connection: nothing ends
            await self.registry.remove(sid)
            return
        if closing is codes.KICKED:
            await self._end(conn.session, LeftReason.KICKED)
        elif closing in (codes.REVOKED, codes.SESSION_REPLACED) or (
                closing is None and not conn.cut and reason == self.server.reason.CLIENT_DISCONNECT):
            await self._end(conn.session, LeftReason.LEFT)
        else:  # a transport close, a ping timeout, a cut, a shutdown, an expired token: a drop
            await self.drop(conn.session, cause)

    async def drop(self, session: Session, cause: str) -> None:
        """Keep the session for ``grace_s``: rooms keep the seat and hear ``player_disconnected``."""
        self.metrics.drops.labels(cause).inc()
        if self.settings.grace_s <= 0:
            await self._end(session, LeftReason.TIMEOUT)
            return
        now = self.clock()
        for room in session.rooms:
            session.rooms[room] = await self.rooms.seq(room)
        session.state, session.dropped_at, session.cause = "grace", now, cause
        if not await self.sessions.drop(session, now + self.settings.grace_s):
            # taken over by a new connection while this drop was handled: nothing was lost
            await self.registry.remove(session.sid)
            return
        await self.registry.mark(session.sid, "grace")
        for room in sorted(session.rooms):
            await self.bus.emit_room(room, "player_disconnected",
                                     {"room": room, "user": session.user_id, "grace_s": self.settings.grace_s})
        log(logger, "drop", user=session.user_id, sid=session.sid, session=session.session_id, cause=cause,
            grace_s=self.settings.grace_s)

    async def _end(self, session: Session, reason: LeftReason, *, stored: bool = True) -> None:
        """A final end: the rooms get ``player_left`` (once), the session and its entry go.

        ``stored=False`` for a session the store already handed over and deleted (grace expiry).
        """
        for room in sorted(session.rooms):
            await self._unseat(session, room, reason)
        if stored:
            await self.sessions.delete(session)
        await self.registry.remove(session.sid)

    async def expire_grace(self) -> int:
        """End the sessions whose grace ran out, each exactly once across the cluster."""
        expired = await self.sessions.expire_due(self.clock())
        for session in expired:
            await self._end(session, LeftReason.TIMEOUT, stored=False)
            self.metrics.grace_expiries.inc()
            log(logger, "grace_expired", user=session.user_id, session=session.session_id)
        return len(expired)

    async def _grace_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.grace_sweep_interval_s)
            try:
                await self.expire_grace()
            except Exception as exc:  # the store is away: try again at the next tick
                log(logger, "grace_sweep_failed", logging.WARNING, error=str(exc))

    async def start(self) -> None:
        self._grace_task = asyncio.create_task(self._grace_loop(), name="gamegw-grace")

    async def aclose(self) -> None:
        self.expiry.aclose()
        if self._grace_task is not None:
            await stop_task(self._grace_task)

    async def close(self, sid: str, why: Disconnect, message: str = "") -> bool:
        """Close one local connection on purpose: ``disconnect_reason`` first, then the close."""
        conn = self.conns.get(sid)
        if conn is None or conn.closing is not None:
            return False
        conn.closing = why
        await self._announce_close(sid, why, message)
        return True

    def close_soon(self, conn: Conn, why: Disconnect, message: str = "") -> None:
        """Close a connection from inside one of its own events: the event's ack goes first."""
        if conn.closing is not None:
            return
        conn.closing = why  # from now on nothing else closes it, however many events follow
        task = asyncio.get_running_loop().create_task(self._announce_close(conn.sid, why, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_close(self, sid: str, why: Disconnect, message: str) -> None:
        payload = why.payload()
        if message:
            payload["message"] = message
        eio_sid = self.manager.eio_sid_from_sid(sid, NAMESPACE)
        await self.emit("disconnect_reason", payload, to=sid)
        await self.server.disconnect(sid, namespace=NAMESPACE)
        if eio_sid is not None:  # and the transport, whatever the client does (CLOSE_BOUND_S)
            await self.server.end_transport(eio_sid)

    def local_sids(self, user_id: str) -> list[str]:
        return [sid for sid, conn in self.conns.items() if conn.claims.user_id == user_id]

    async def kick_local(self, user_id: str, message: str = "") -> int:
        closed = 0
        for sid in self.local_sids(user_id):
            closed += await self.close(sid, codes.KICKED, message)
        if closed:
            log(logger, "kick", user=user_id, connections=closed, message=message)
        return closed

    async def revoke_local(self, user_id: str) -> int:
        """Close, with 4500, the user's connections whose token is now revoked."""
        closed = 0
        for sid in self.local_sids(user_id):
            if await self.revocations.is_revoked(self.conns[sid].claims):
                closed += await self.close(sid, codes.REVOKED, "token revoked")
        if closed:
            log(logger, "revoke", user=user_id, connections=closed)
        return closed

    async def drop_local(self, user_id: str) -> int:
        """Cut the user's connections as a network fault would: no packet, the TCP just ends."""
        dropped = 0
        for sid in self.local_sids(user_id):
            conn = self.conns[sid]
            if conn.cut or conn.closing is not None:
                continue
            conn.cut = "simulated_drop"
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
        sids = self.local_sids(user_id)
        for sid in sids:
            await self.emit(event, data, to=sid)
        return len(sids)

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
        counted, timed = self.metrics.for_event(label)
        counted.inc()
        conn = self.conns.get(sid)
        try:
            if handler is None:
                raise ActionError(AckCode.BAD_REQUEST, f"unknown event {event!r}")
            if conn is None:
                raise ActionError(AckCode.UNAVAILABLE, "connection is closing")
            if conn.bucket is not None:
                if not conn.bucket.take(started):
                    self._rate_limited(conn, started)
                conn.limited = False
            now = self.clock()
            if now - conn.touched >= TOUCH_EVERY_S:
                conn.touched = now
                await self.registry.touch(sid, now)
            ack = await handler(conn, data)
            result = "ok"
        except ActionError as exc:
            ack = exc.ack()
            result = str(exc.code)
        except (RedisError, OSError, TimeoutError) as exc:  # the state store is away or slow
            ack = StoreUnavailable().ack()
            result = str(AckCode.UNAVAILABLE)
            self._store_trouble(event, exc)
        except Exception:
            logger.exception("handler failed", extra={"gamegw_fields": {"event_name": event, "sid": sid}})
            ack = ActionError(AckCode.INTERNAL, "internal error").ack()
            result = str(AckCode.INTERNAL)
        self.metrics.ack(label, result).inc()
        timed.observe(time.perf_counter() - started)
        return ack

    def _rate_limited(self, conn: Conn, now: float) -> NoReturn:
        """Refuse an event over the rate; close the connection if that goes on (4029)."""
        self.guards.hit(Limit.EVENTS, log=not conn.limited, user=conn.claims.user_id, sid=conn.sid,
                        address=conn.address, max_per_s=self.settings.max_events_per_s)
        conn.limited = True
        if conn.abuse is not None and not conn.abuse.take(now) and conn.closing is None:
            self.guards.hit(Limit.ABUSE_DISCONNECT, user=conn.claims.user_id, sid=conn.sid, address=conn.address,
                            max_rate_limited=self.settings.abuse_max_rate_limited,
                            window_s=self.settings.abuse_window_s)
            self.close_soon(conn, codes.FLOODING, "too many events for too long")
        raise ActionError(AckCode.RATE_LIMITED, f"more than {self.settings.max_events_per_s:g} events per second")

    def _store_trouble(self, event: str, exc: BaseException) -> None:
        """One warning per second at most: an outage must not turn into a log flood."""
        now = time.monotonic()
        self._store_errors += 1
        if now - self._store_logged >= 1.0:
            log(logger, "store_unavailable", logging.WARNING, event_name=event, error=type(exc).__name__,
                detail=str(exc), count=self._store_errors)
            self._store_logged, self._store_errors = now, 0

    async def _join(self, conn: Conn, data: Any) -> Ack:
        room = parse(JoinMsg, data).room
        user_id = conn.claims.user_id
        if room in conn.rooms:  # joining twice is harmless
            members = await self.rooms.members(room)
            return {"ok": True, "room": room, "seq": await self.rooms.seq(room), "members": members}
        # Routed here and in the room before the join script fixes the seq the player starts
        # after: a move just after it can no longer reach this instance before the player does.
        await self.rooms.attach(room, conn.sid)
        await self.server.enter_room(conn.sid, room, namespace=NAMESPACE)
        try:
            joined = await self.rooms.join(room, user_id, conn.session.session_id)
        except BaseException:
            await self.server.leave_room(conn.sid, room, namespace=NAMESPACE)
            await self.rooms.detach(room, conn.sid)
            raise
        conn.rooms[room] = joined.seq
        await self.registry.add_room(conn.sid, room)
        await self.sessions.put(conn.session)
        if joined.first:
            await self.bus.emit_room(room, "player_joined", {"room": room, "user": user_id}, skip_sid=conn.sid)
        return {"ok": True, "room": room, "seq": joined.seq, "members": joined.members}

    async def _leave(self, conn: Conn, data: Any) -> Ack:
        room = parse(LeaveMsg, data).room
        self._member(conn, room)
        await self.server.leave_room(conn.sid, room, namespace=NAMESPACE)
        await self.rooms.detach(room, conn.sid)
        await self.registry.remove_room(conn.sid, room)
        await self._unseat(conn.session, room, LeftReason.LEFT)
        await self.sessions.put(conn.session)
        return {"ok": True}

    async def _unseat(self, session: Session, room: str, reason: LeftReason) -> None:
        session.rooms.pop(room, None)
        if await self.rooms.leave(room, session.user_id, session.session_id):
            await self.bus.emit_room(room, "player_left",
                                     {"room": room, "user": session.user_id, "reason": str(reason)})

    async def _move(self, conn: Conn, data: Any) -> Ack:
        msg = parse(MoveMsg, data)
        self._member(conn, msg.room)
        try:
            action_bytes = orjson.dumps(msg.action)
        except TypeError:
            raise ActionError(AckCode.BAD_REQUEST, "action must be plain JSON") from None
        if len(action_bytes) > self.settings.max_action_bytes:
            self.guards.hit(Limit.ACTION_SIZE, user=conn.claims.user_id, sid=conn.sid, size=len(action_bytes),
                            max_action_bytes=self.settings.max_action_bytes)
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
        if await self.revocations.is_revoked(claims):
            raise ActionError(AckCode.BAD_REQUEST, "token_invalid: token revoked")
        if claims.user_id != conn.claims.user_id:
            # a connection that presents another user's token is not to be trusted any more:
            # the refusal is acked, then the connection closes with 4500
            log(logger, "refresh_refused", logging.WARNING, user=conn.claims.user_id, sid=conn.sid,
                token_user=claims.user_id)
            self.expiry.disarm(conn.sid)
            self.close_soon(conn, codes.REVOKED, "refresh for another user")
            raise ActionError(AckCode.FORBIDDEN, "the token is for another user")
        conn.claims = claims
        self.expiry.arm(conn.sid, claims.exp)
        return {"ok": True, "exp": claims.exp}

    async def _token_expiring(self, sid: str, exp: float) -> None:
        if sid in self.conns:
            await self.emit("token_expiring", {"exp": exp}, to=sid)

    async def _token_expired(self, sid: str, exp: float) -> None:
        conn = self.conns.get(sid)
        if conn is not None and conn.claims.exp <= exp:
            log(logger, "token_expired", user=conn.claims.user_id, sid=sid)
            await self.close(sid, codes.EXPIRED)

    @staticmethod
    def _member(conn: Conn, room: str) -> None:
        if room not in conn.rooms:
            raise ActionError(AckCode.NOT_IN_ROOM, f"not in room {room!r}")
