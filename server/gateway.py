"""The ``/game`` namespace: thin handlers over auth, the registry and the room store.

Each client event goes through :meth:`Gateway._run`, which validates the payload against its
model, turns an :class:`ActionError` into the contract's error ack, counts the event and its
result, and times the handler. The handlers themselves only call the modules that own the
state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs

import orjson
import socketio
from redis.exceptions import RedisError

from .auth.expiry import TokenClock
from .auth.revocation import Revocations
from .auth.tokens import Claims, Verifier
from .config import Settings
from .conn import Conn
from .guard.guards import Guards, address_of
from .guard.limits import Budget, Limit, UserBudgets
from .hooks.client import DENY, Hooks, Verdict
from .logs import log, stop_task
from .metrics import Metrics
from .protocol import codes
from .protocol.codes import AckCode, Disconnect, LeftReason
from .protocol.errors import ActionError, AuthError, HookRefused, StoreUnavailable
from .protocol.payloads import JoinMsg, LeaveMsg, MoveMsg, RefreshMsg, StateMsg, SyncMsg, encode_action, parse
from .state.registry import Connection, Registry
from .state.rooms import MoveEvent, RoomStore
from .state.sessions import Session, SessionStore
from .transport.manager import GameManager
from .transport.websocket import Transports

if TYPE_CHECKING:
    from .cluster.api import Cluster
    from .cluster.bus import Bus

NAMESPACE = "/game"
TOUCH_EVERY_S = 1.0

logger = logging.getLogger("gamegw.gateway")
Ack = dict[str, Any]


def _ignore_move(room: str, seq: int) -> None:
    return None


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
    EVENTS = ("join", "leave", "move", "sync", "state", "refresh")  # what a client may send; _<name> handles it

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
        hooks: Hooks | None = None,
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
        self.hooks = hooks if hooks is not None else Hooks(settings, metrics)
        self.clock = clock
        self.conns: dict[str, Conn] = {}
        # sids whose connect handler is under way -> a close that arrived meanwhile (see close())
        self._connecting: dict[str, tuple[Disconnect, str] | None] = {}
        self.budgets = UserBudgets(settings.max_events_per_s, settings.max_events_burst,
                                   settings.abuse_max_rate_limited, settings.abuse_window_s)
        self._seats_swept = 0.0
        # wired by create_app once they exist (they need the gateway too)
        self.bus: Bus
        self.cluster: Cluster
        # each accepted move, (room, seq): the dashboard's feed counts them while a page is open
        self.on_move: Callable[[str, int], None] = _ignore_move
        self._handlers: dict[str, Callable[[Conn, Any], Awaitable[Ack]]] = {
            name: getattr(self, f"_{name}") for name in self.EVENTS}

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
        user_id = claims.user_id
        try:
            revoked = await self.revocations.is_revoked(claims)
            blocked = not revoked and await self.cluster.is_blocked(user_id)
        except (RedisError, OSError, TimeoutError) as exc:
            self._store_trouble("connect", exc)
            self._refuse(sid, address, codes.UNAVAILABLE, "state store unavailable")
        if revoked:
            self._refuse(sid, address, codes.TOKEN_INVALID, "token revoked")
        if blocked:
            # simulate-drop --block: behave like an unreachable network, not like a refusal
            log(logger, "blocked", user=user_id, sid=sid, address=address)
            await self._cut(sid)
            raise socketio.exceptions.ConnectionRefusedError("unavailable", codes.UNAVAILABLE.data("blocked"))
        if self.hooks.wants("connect"):  # before the seat: a vetoed user takes no seat from anyone
            verdict = await self.hooks.check("connect", user=user_id)
            if not verdict.ok:
                self._refuse_by_hook(sid, address, verdict)
        self._connecting[sid] = None
        try:
            conn = await self._seat(sid, claims, address, auth, environ)
        finally:
            deferred = self._connecting.pop(sid, None)
        conn.deferred = deferred
        self.metrics.connects.inc()
        self.metrics.connections.inc()
        log(logger, "connect", user=user_id, sid=sid, address=address, session=conn.session.session_id,
            resumed=conn.resumed)

    async def _seat(self, sid: str, claims: Claims, address: str, auth: Any, environ: Mapping[str, Any]) -> Conn:
        """The seat decision (one atomic step of the session store), then the registry entry,
        the budget, and the closes the decision calls for."""
        user_id, iid, now = claims.user_id, self.settings.instance_id, self.clock()
        most = self.settings.max_connections_per_user
        try:
            seat = await self.sessions.seat(user_id=user_id, sid=sid, instance_id=iid, now=now,
                                            new_session_id=uuid.uuid4().hex, max_live=most,
                                            policy=self.settings.on_connection_limit)
        except (RedisError, OSError, TimeoutError) as exc:
            self._store_trouble("connect", exc)
            self._refuse(sid, address, codes.UNAVAILABLE, "state store unavailable")
        if seat.outcome in ("takeover", "refused") or seat.evicted:
            self.guards.hit(Limit.CONNECTIONS_PER_USER, user=user_id, address=address, live=seat.live,
                            policy=self.settings.on_connection_limit)
        if seat.outcome == "refused" or seat.session is None:
            self._refuse(sid, address, codes.CONNECTION_LIMIT, f"user has {seat.live} of {most} connections")
        session, last_seq = seat.session, _last_seq(auth)
        if seat.outcome == "resumed":
            self.metrics.resumes.labels("resumed").inc()
            self.metrics.resume_seconds.observe(max(0.0, now - (seat.dropped_at or now)))
        elif seat.outcome == "new" and last_seq:  # the client came back to resume, but grace was over
            self.metrics.resumes.labels("too_late").inc()
        conn = Conn(sid=sid, claims=claims, address=address, session=session,
                    resumed=seat.outcome in ("resumed", "takeover"), from_grace=seat.outcome == "resumed",
                    last_seq=last_seq, touched=now)
        if self.budgets.enabled:
            conn.budget = self.budgets.acquire(user_id, now, seat.budget)
        self.conns[sid] = conn
        try:
            if seat.outcome == "resumed" and seat.previous_sid is not None:
                await self.registry.remove(seat.previous_sid)
            await self.registry.add(Connection(
                sid=sid, user_id=user_id, instance_id=iid, address=address, connected_at=now, last_seen=now,
                session_id=session.session_id,
                transport=str(environ.get("HTTP_UPGRADE", "") or "polling").lower(),
                resumed=conn.resumed, rooms=set(session.rooms)))
            if seat.outcome == "takeover" and seat.previous_sid is not None:
                await self.cluster.close_sid(seat.previous_sid, codes.SESSION_REPLACED, seat.previous_instance)
            for evicted in seat.evicted:  # ended to make room: closed with 4504, their rooms hear player_left
                await self.cluster.close_sid(evicted.sid, codes.SESSION_REPLACED, evicted.instance_id)
                await self._end(evicted, LeftReason.LEFT, stored=False)
        except (RedisError, OSError, TimeoutError) as exc:
            # the seat is ours but the rest could not be written: a drop, so that the user resumes
            self._store_trouble("connect", exc)
            self.conns.pop(sid, None)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self._release_budget(conn)
                await self.drop(session, "connect_failed")
            self._refuse(sid, address, codes.UNAVAILABLE, "state store unavailable")
        return conn

    def _refuse(self, sid: str, address: str, refusal: codes.Refusal, detail: str) -> NoReturn:
        self.metrics.refusals.labels(refusal.name).inc()
        # throttled: refusals are what a flood of forged tokens or handshakes turns into
        self.guards.throttle.log(logger, "refuse", key=f"refuse:{refusal.name}", sid=sid, address=address,
                                 code=refusal.code, reason=refusal.name, detail=detail)
        raise socketio.exceptions.ConnectionRefusedError(refusal.name, refusal.data())

    def _refuse_by_hook(self, sid: str, address: str, verdict: Verdict) -> NoReturn:
        """``connect_error`` with the hook's code as ``message`` and its message as ``data.reason``."""
        refusal = codes.HOOK_UNAVAILABLE if verdict is DENY else codes.HOOK_REFUSED
        self.metrics.refusals.labels(refusal.name).inc()
        self.guards.throttle.log(logger, "refuse", key=f"refuse:{refusal.name}", sid=sid, address=address,
                                 code=refusal.code, reason=verdict.code, detail=verdict.message)
        raise socketio.exceptions.ConnectionRefusedError(verdict.code, refusal.data(verdict.message))

    async def _ask_hook(self, event: str, conn: Conn, room: str, action: Any = None) -> None:
        """Raise the hook's veto (or hooks_on_error's deny) as the event's error ack."""
        verdict = await self.hooks.check(event, user=conn.claims.user_id, room=room, action=action,
                                         session=conn.session.session_id)
        if verdict is DENY:  # the hook could not be asked (hooks_on_error = deny)
            raise ActionError(AckCode.HOOK_UNAVAILABLE, verdict.message)
        if not verdict.ok:
            raise HookRefused(verdict.code, verdict.message)

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
        if conn.deferred is not None:  # replaced (or kicked) while its connect was under way
            await self.close(sid, *conn.deferred)
            return
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
                await self.manager.send_packets(eio_sid, pkts)
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
        self.manager.floors.pop(sid, None)
        self.manager.joining.pop(sid, None)
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
        await self._release_budget(conn)
        # the ends below change the session only while this connection holds it: one taken over
        # (or evicted) meanwhile ends nothing, and the registry entry just goes
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

    async def _release_budget(self, conn: Conn) -> None:
        """The connection ends: its user's budget is kept for the next connect, on any instance."""
        if conn.budget is None:
            return
        kept = self.budgets.release(conn.claims.user_id, self.clock())
        conn.budget = None
        if kept is not None:
            await self.sessions.save_budget(conn.claims.user_id, *kept)

    async def _end(self, session: Session, reason: LeftReason, *, stored: bool = True) -> None:
        """A final end: the session goes (only if ``session.sid`` still holds it), then its rooms
        get ``player_left`` (once) and its registry entry goes.

        ``stored=False`` for a session the store already ended and handed over (grace expiry,
        eviction). A crash between the two steps leaves seats of a session that no longer
        exists: :meth:`sweep_seats` removes them.
        """
        if stored:
            ended = await self.sessions.end(session)
            if ended is None:  # another connection holds it now, or it ended already
                await self.registry.remove(session.sid)
                return
            session = ended
        for room in sorted(session.rooms):
            await self._unseat(session, room, reason)
        await self.registry.remove(session.sid)

    async def expire_grace(self) -> int:
        """End the sessions whose grace ran out, each exactly once across the cluster."""
        expired = await self.sessions.expire_due(self.clock())
        for session in expired:
            await self._end(session, LeftReason.TIMEOUT, stored=False)
            self.metrics.grace_expiries.inc()
            log(logger, "grace_expired", user=session.user_id, session=session.session_id)
        return len(expired)

    async def sweep_seats(self) -> int:
        """Unseat the room seats of sessions that no longer exist (see :meth:`_end`)."""
        removed = await self.rooms.sweep(self.sessions.exists)
        for room, user_id, last in removed:
            if last:
                await self.bus.emit_room(room, "player_left",
                                         {"room": room, "user": user_id, "reason": str(LeftReason.TIMEOUT)})
        if removed:
            log(logger, "seats_swept", logging.WARNING, seats=len(removed))
        return len(removed)

    async def _grace_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.grace_sweep_interval_s)
            try:
                await self.expire_grace()
                now = self.clock()
                self.budgets.prune(now)
                if now - self._seats_swept >= self.settings.seat_sweep_interval_s:
                    self._seats_swept = now
                    await self.sweep_seats()
            except Exception as exc:  # the store is away: try again at the next tick
                log(logger, "grace_sweep_failed", logging.WARNING, error=str(exc))

    async def start(self) -> None:
        self._grace_task = asyncio.create_task(self._grace_loop(), name="gamegw-grace")

    async def aclose(self) -> None:
        self.expiry.aclose()
        if self._grace_task is not None:
            await stop_task(self._grace_task)

    async def close(self, sid: str, why: Disconnect, message: str = "") -> bool:
        """Close one local connection on purpose: ``disconnect_reason`` first, then the close.

        A connection whose connect handler is still under way (it may have just been replaced
        by a racing connect elsewhere) is closed as soon as its connect completes."""
        if sid in self._connecting:
            if self._connecting[sid] is None:
                self._connecting[sid] = (why, message)
            return True
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

    async def end_waiting(self, user_id: str, reason: LeftReason) -> int:
        """End the user's sessions in grace (a kick of a player who just dropped): the rooms get
        ``player_left`` with ``reason``, once, as for a connection's end."""
        ended = 0
        for session in await self.sessions.of_user(user_id):
            if session.state == "grace":
                gone = await self.sessions.end(session)  # only while still in grace under that sid
                if gone is not None:
                    await self._end(gone, reason, stored=False)
                    ended += 1
        if ended:
            log(logger, "end_waiting", user=user_id, sessions=ended, reason=str(reason))
        return ended

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
            if conn.cut or conn.closing is not None or sid in self._connecting:
                continue  # (a connection still being made is after the fault: it is left to finish)
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

    async def publish(self, room: str, user_id: str, action: dict[str, Any]) -> MoveEvent | None:
        """A server event for ``room`` from ``user_id`` (``POST /admin/publish``): the path a
        move takes from the store on (the next seq, the log, delivery on every instance with
        members, the dashboard's feed), without the membership check and without the rules.
        None when the room has no members; ``bad_request`` / ``payload_too_large`` as a move."""
        action_json = encode_action(action, self.settings.max_action_bytes)
        event = await self.rooms.publish(room, user_id, action_json, int(self.clock() * 1000))
        if event is not None:
            await self.bus.publish_move(room, event)
            self.metrics.published.inc()
            self.on_move(room, event.seq)
        return event

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
            if conn is None:
                raise ActionError(AckCode.UNAVAILABLE, "connection is closing")
            now = self.clock()
            budget = conn.budget
            if budget is not None:  # every event counts, unknown ones too
                if not budget.events.take(now):
                    self._rate_limited(conn, budget, now)
                budget.limited = False
            if handler is None:
                raise ActionError(AckCode.BAD_REQUEST, f"unknown event {event!r}")
            await self._touch(conn, now)
            ack = await handler(conn, data)
            result = "ok"
        except ActionError as exc:
            ack = exc.ack()
            result = exc.label
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

    async def _touch(self, conn: Conn, now: float) -> None:
        """``last seen``, at most once per TOUCH_EVERY_S per connection (the Redis registry
        batches these into one write per heartbeat of the instance)."""
        if now - conn.touched >= TOUCH_EVERY_S:
            conn.touched = now
            await self.registry.touch(conn.sid, now)

    async def on_pong(self, eio_sid: str) -> None:
        """A client answered the Engine.IO ping: an idle player is still there."""
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        conn = self.conns.get(sid) if sid is not None else None
        if conn is not None and conn.closing is None:
            await self._touch(conn, self.clock())

    def _rate_limited(self, conn: Conn, budget: Budget, now: float) -> NoReturn:
        """Refuse an event over the user's rate; close the connection if that goes on (4029)."""
        self.guards.hit(Limit.EVENTS, log=not budget.limited, user=conn.claims.user_id, sid=conn.sid,
                        address=conn.address, max_per_s=self.settings.max_events_per_s)
        budget.limited = True
        if budget.abuse is not None and not budget.abuse.take(now) and conn.closing is None:
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
        most = self.settings.max_rooms_per_connection
        if len(conn.rooms) >= most:
            self.guards.hit(Limit.ROOMS, user=user_id, sid=conn.sid, max_rooms=most)
            raise ActionError(AckCode.ROOM_LIMIT, f"a connection may be in {most} rooms at most")
        if self.hooks.wants("join"):
            await self._ask_hook("join", conn, room)
        # The session lists the room before the room seats it: a session taken over meanwhile
        # passes the room on with it, and one ended meanwhile leaves a seat the sweep removes.
        if not await self.sessions.set_room(conn.session, room, 0):
            raise ActionError(AckCode.UNAVAILABLE, "connection is closing")
        # Routed here and in the room before the join script fixes the seq the player starts
        # after: a move just after it can no longer reach this instance before the player does.
        # What the room sends meanwhile is held, and the moves the join's seq already covers
        # are dropped from it (the player would see them as repeats).
        self.manager.hold(conn.sid, room)
        floor: int | None = None
        try:
            await self.rooms.attach(room, conn.sid)
            await self.server.enter_room(conn.sid, room, namespace=NAMESPACE)
            joined = await self.rooms.join(room, user_id, conn.session.session_id)
            floor = joined.seq
        except BaseException:
            await self.server.leave_room(conn.sid, room, namespace=NAMESPACE)
            await self.rooms.detach(room, conn.sid)
            await self.sessions.set_room(conn.session, room, None)
            raise
        finally:
            await self.manager.release(NAMESPACE, conn.sid, room, floor)
        conn.rooms[room] = joined.seq
        await self.registry.add_room(conn.sid, room)
        if joined.first:
            await self.bus.emit_room(room, "player_joined", {"room": room, "user": user_id}, skip_sid=conn.sid)
        return {"ok": True, "room": room, "seq": joined.seq, "members": joined.members}

    async def _leave(self, conn: Conn, data: Any) -> Ack:
        room = parse(LeaveMsg, data).room
        self._member(conn, room)
        if self.hooks.wants("leave"):
            await self._ask_hook("leave", conn, room)
        await self.server.leave_room(conn.sid, room, namespace=NAMESPACE)
        await self.rooms.detach(room, conn.sid)
        await self.registry.remove_room(conn.sid, room)
        if await self.sessions.set_room(conn.session, room, None):
            await self._unseat(conn.session, room, LeftReason.LEFT)
        else:  # the session passed to another connection, with the room
            conn.rooms.pop(room, None)
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
            action_json = encode_action(msg.action, self.settings.max_action_bytes)
        except ActionError as exc:
            if exc.code is AckCode.PAYLOAD_TOO_LARGE:  # the refusal path only: encoded again for the log
                self.guards.hit(Limit.ACTION_SIZE, user=conn.claims.user_id, sid=conn.sid,
                                size=len(orjson.dumps(msg.action)), max_action_bytes=self.settings.max_action_bytes)
            raise
        if self.hooks.wants("move"):
            # before the room's seq is taken: a vetoed move takes none and is sent to nobody.
            # Nothing is locked while the hook thinks; see docs/protocol.md, "Backend hooks", for
            # the order this gives moves (one connection's events are handled one at a time)
            await self._ask_hook("move", conn, msg.room, msg.action)
        event = await self.rooms.move(msg.room, conn.claims.user_id, msg.action, action_json,
                                      int(self.clock() * 1000))
        await self.bus.publish_move(msg.room, event)
        self.metrics.moves.inc()
        self.on_move(msg.room, event.seq)
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
