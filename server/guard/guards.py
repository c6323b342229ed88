"""What happens when a limit is hit, and the HTTP guards in front of Engine.IO.

Every case ends in a clear code for the client, one log line without secrets (``limit_hit``,
throttled per limit so that a flood cannot become a log flood) and a metric
(``gamegw_limit_hits_total{limit}``, see :class:`~server.limits.Limit`):

==================  ==========================================================================
limit               what the client sees
==================  ==========================================================================
events              a ``rate_limited`` ack (the gateway's ``_run``)
abuse_disconnect    ``disconnect_reason`` 4029 ``rate_limited``, then the close
handshakes          ``connect_error`` ``rate_limited`` (4029); counted at every Engine.IO open,
                    and a session over the limit is closed within ``CLOSE_BOUND_S``
connections_per_    ``connect_error`` ``connection_limit`` (4504), or 4504 ``session_replaced``
user                for the oldest connection
token_size          ``connect_error`` ``token_invalid`` (4500)
action_size         a ``payload_too_large`` ack
message_size        websocket: ``disconnect_reason`` 4413, then close 1009 (aiohttp refuses the
                    frame from its header, before buffering it); polling: HTTP 413
                    ``payload_too_large`` before the body is read, then 4413
handshake_timeout   no ``/game`` within ``handshake_timeout_s``: the transport is closed
slow_request        a polling body that does not arrive within ``handshake_timeout_s``: HTTP 408
slow_consumer       unsent bytes over ``max_outbound_bytes``: the TCP connection is cut (a drop)
==================  ==========================================================================

Only ``/game`` is served: :class:`OtherNamespaces`, python-socketio's catch-all namespace,
refuses every other one (``/`` included) with ``invalid_namespace`` (4404), and the transport is
ended (a ``/game`` connection on it first gets ``disconnect_reason`` 4400).

The HTTP guards: a foreign ``Origin`` gets 403 ``origin_not_allowed`` before Engine.IO sees
the request (so no session is ever made), and a long-polling POST must say its length
(``411`` otherwise: Engine.IO clients always do, and python-engineio would read none of a chunked
body), stay under ``max_message_bytes``, arrive within ``handshake_timeout_s`` and be an Engine.IO
payload a client may send (``400 bad_packet`` and 4400 otherwise, see :func:`polling_payload_ok`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio import payload as eio_payload

from ..config import Settings
from ..logs import Throttle
from ..metrics import Metrics
from ..protocol import codes
from .limits import AddressLimiter, Limit

if TYPE_CHECKING:
    from ..conn import Conn
    from ..transport.manager import GameManager, GameServer

logger = logging.getLogger("gamegw.limits")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY = web.RequestKey("gamegw_polling_body", bytes)
ENGINEIO_PATH = "/socket.io"
NAMESPACE = "/game"
HANDSHAKE_ALLOWED = "gamegw.handshake_allowed"  # in an Engine.IO session's environ until its first CONNECT


def address_of(environ: Mapping[str, Any]) -> str:
    """The client's address (the TCP peer; put a proxy's trusted header here if there is one)."""
    request = environ.get("aiohttp.request")
    remote = getattr(request, "remote", None)
    return str(remote or environ.get("REMOTE_ADDR", ""))


def origin_checker(settings: Settings) -> Callable[[str | None], bool]:
    """The CORS allowlist; patterns such as ``http://localhost:*`` are allowed in it."""
    allowed = settings.cors_allowed_origins

    def check(origin: str | None) -> bool:
        if origin is None:
            return True
        return any(origin == a or a == "*" or fnmatch.fnmatchcase(origin, a) for a in allowed)

    return check


class Guarded(Protocol):
    """The gateway, as the guards see it (create_app wires the one to the other)."""

    @property
    def manager(self) -> GameManager: ...

    @property
    def server(self) -> GameServer: ...

    @property
    def conns(self) -> dict[str, Conn]: ...

    def close_soon(self, conn: Conn, why: codes.Disconnect, message: str = "") -> None: ...

    async def close(self, sid: str, why: codes.Disconnect, message: str = "") -> bool: ...


class Guards:
    def __init__(self, settings: Settings, metrics: Metrics, *, throttle: Throttle | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.throttle = throttle or Throttle()
        self.origin_allowed = origin_checker(settings)
        self.gateway: Guarded  # wired by create_app
        self.handshakes = AddressLimiter(settings.max_connects_per_address_per_s,
                                         settings.max_connects_per_address_burst)
        self._tasks: set[asyncio.Task[Any]] = set()

    def hit(self, limit: Limit, *, log: bool = True, **fields: Any) -> None:
        """Count the limit and log one line for it (unless told not to, or it is logging too much)."""
        self.metrics.hit(limit)
        if log:
            self.throttle.log(logger, "limit_hit", logging.WARNING, key=str(limit), limit=str(limit), **fields)

    # -- handshakes and namespaces --------------------------------------------------------------

    def engineio_open(self, eio_sid: str, environ: dict[str, Any]) -> bool:
        """Every Engine.IO handshake takes a token from its address's bucket, joined or not.

        The verdict waits in the environ for the session's first CONNECT, where the client can
        be told why (``rate_limited``); a session over the limit is closed soon whatever it does.
        """
        address = address_of(environ)
        allowed = self.handshakes.allow(address)
        environ[HANDSHAKE_ALLOWED] = allowed
        if not allowed:
            self.hit(Limit.HANDSHAKES, address=address, max_per_s=self.settings.max_connects_per_address_per_s)
        return allowed

    def connect_allowed(self, environ: dict[str, Any]) -> bool:
        """For a /game CONNECT: the first on a transport was counted at its Engine.IO open; each
        further attempt on the same transport takes a token of its own."""
        allowed: bool | None = environ.pop(HANDSHAKE_ALLOWED, None)
        if allowed is None:
            address = address_of(environ)
            allowed = self.handshakes.allow(address)
            if not allowed:
                self.hit(Limit.HANDSHAKES, address=address, max_per_s=self.settings.max_connects_per_address_per_s)
        return allowed

    def refuse_namespace(self, namespace: str, environ: dict[str, Any]) -> NoReturn:
        refusal = codes.INVALID_NAMESPACE
        self.metrics.refusals.labels(refusal.name).inc()
        self.throttle.log(logger, "refuse", logging.WARNING, key=f"refuse:{refusal.name}",
                          address=address_of(environ), code=refusal.code, reason=refusal.name,
                          namespace=namespace[:100])
        raise socketio.exceptions.ConnectionRefusedError(refusal.name, refusal.data())

    def unserved(self, eio_sid: str) -> None:
        """Another namespace was refused on this transport: it ends (a /game connection on it is
        told 4400 first: a stock client never asks for another namespace)."""
        sid = self.gateway.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        conn = self.gateway.conns.get(sid) if sid else None
        if conn is not None:
            self.gateway.close_soon(conn, codes.BAD_PACKET, "only /game is served")
        else:
            self.gateway.server.close_transport(eio_sid)

    # -- callbacks from the transport layer (synchronous: they run inside the I/O path) -------

    def _conn_fields(self, eio_sid: str) -> tuple[str | None, dict[str, Any]]:
        gateway = self.gateway
        sid = gateway.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        conn = gateway.conns.get(sid) if sid else None
        if conn is None:
            return None, {"eio_sid": eio_sid}
        return sid, {"user": conn.claims.user_id, "sid": sid, "address": conn.address}

    def slow_consumer(self, eio_sid: str) -> None:
        """The transport was cut because its unsent bytes passed ``max_outbound_bytes``."""
        sid, fields = self._conn_fields(eio_sid)
        conn = self.gateway.conns.get(sid) if sid else None
        if conn is not None:
            conn.cut = "slow_consumer"
        self.hit(Limit.SLOW_CONSUMER, max_outbound_bytes=self.settings.max_outbound_bytes, **fields)

    def message_too_big(self, eio_sid: str) -> str | None:
        """A websocket frame over the limit: the Engine.IO packet to send before the close (1009)."""
        sid, fields = self._conn_fields(eio_sid)
        self.hit(Limit.MESSAGE_SIZE, transport="websocket", max_message_bytes=self.settings.max_message_bytes,
                 **fields)
        conn = self.gateway.conns.get(sid) if sid else None
        if conn is None or conn.closing is not None:
            return None
        conn.closing = codes.MESSAGE_TOO_BIG
        [pkt] = self.gateway.manager.encode(NAMESPACE, "disconnect_reason", codes.MESSAGE_TOO_BIG.payload())
        text: str = pkt.encode()
        return text

    def bad_event(self, sid: str, name: Any) -> None:
        """A client sent ``connect``/``disconnect`` or a name that is not a string: a bad_request ack."""
        self.metrics.for_event("unknown")[0].inc()
        self.metrics.ack("unknown", "bad_request").inc()
        self.throttle.log(logger, "bad_event", logging.WARNING, sid=sid, event_name=repr(name)[:64])

    def bad_frame(self, eio_sid: str) -> None:
        """A websocket frame Engine.IO cannot decode: as for a packet that is not Socket.IO."""
        self.bad_packet(eio_sid, "malformed")

    def bad_packet(self, eio_sid: str, why: str) -> None:
        """A packet that does not parse (4400), or binary attachments over the limit (4413)."""
        sid, fields = self._conn_fields(eio_sid)
        if why == "too_big":
            self.hit(Limit.MESSAGE_SIZE, transport="binary_attachments",
                     max_message_bytes=self.settings.max_message_bytes, **fields)
            why_code = codes.MESSAGE_TOO_BIG
        else:
            self.metrics.bad_packets.inc()
            self.throttle.log(logger, "bad_packet", logging.WARNING, **fields)
            why_code = codes.BAD_PACKET
        conn = self.gateway.conns.get(sid) if sid else None
        if conn is not None:
            self.gateway.close_soon(conn, why_code)
        else:
            self.gateway.server.close_transport(eio_sid)

    async def bad_polling_body(self, eio_sid: str) -> None:
        """A polling body that is not an Engine.IO payload: a /game connection is told why (4400)
        and closed soon; a session without one is closed at once (Engine.IO's rule: its next
        request gets 400)."""
        sid, fields = self._conn_fields(eio_sid)
        if sid is not None or not eio_sid:
            self.bad_packet(eio_sid, "malformed")
            return
        self.metrics.bad_packets.inc()
        self.throttle.log(logger, "bad_packet", logging.WARNING, **fields)
        await self.gateway.server.drop_transport(eio_sid)

    def handshake_timeout(self, eio_sid: str, environ: dict[str, Any] | None) -> None:
        self.hit(Limit.HANDSHAKE_TIMEOUT, eio_sid=eio_sid, address=address_of(environ or {}),
                 handshake_timeout_s=self.settings.handshake_timeout_s)

    # -- HTTP ----------------------------------------------------------------------------------

    def middlewares(self) -> list[Any]:
        return [self._origin_guard, self._polling_body_guard]

    @web.middleware
    async def _origin_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and request.path.startswith(ENGINEIO_PATH) and not self.origin_allowed(origin):
            self.metrics.refusals.labels(codes.ORIGIN_NOT_ALLOWED.code).inc()
            self.throttle.log(logger, "refuse", logging.WARNING, key="origin", reason=codes.ORIGIN_NOT_ALLOWED.code,
                              origin=origin[:200], address=request.remote or "")
            return _response(codes.ORIGIN_NOT_ALLOWED)
        return await handler(request)

    @web.middleware
    async def _polling_body_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or not request.path.startswith(ENGINEIO_PATH):
            return await handler(request)
        address = request.remote or ""
        length = request.content_length
        if length is None:
            return self._refuse_body(request, codes.LENGTH_REQUIRED)
        limit = self.settings.max_message_bytes
        if length > limit:
            self.hit(Limit.MESSAGE_SIZE, transport="polling", address=address, content_length=length,
                     max_message_bytes=limit)
            self._close_session(request.query.get("sid"), codes.MESSAGE_TOO_BIG)
            return self._refuse_body(request, codes.PAYLOAD_TOO_LARGE)
        timeout = self.settings.handshake_timeout_s or None
        try:
            request[BODY] = await asyncio.wait_for(request.content.readexactly(length), timeout)
        except TimeoutError:
            self.hit(Limit.SLOW_REQUEST, address=address, content_length=length, timeout_s=timeout)
            return self._refuse_body(request, codes.REQUEST_TIMEOUT)
        except asyncio.IncompleteReadError:
            return self._refuse_body(request, codes.BAD_BODY)
        if not polling_payload_ok(request[BODY]):
            await self.bad_polling_body(request.query.get("sid", ""))
            return _response(codes.BAD_PAYLOAD)
        return await handler(request)

    @staticmethod
    def _refuse_body(request: web.Request, refusal: codes.HttpRefusal) -> web.Response:
        """Answer without reading the body. aiohttp then reads what is left and throws it away,
        for ``lingering_time`` at most, and closes the connection: memory stays flat."""
        return _response(refusal)

    def _close_session(self, eio_sid: str | None, why: codes.Disconnect) -> None:
        sid = self.gateway.manager.sid_from_eio_sid(eio_sid, NAMESPACE) if eio_sid else None
        if sid is None or sid not in self.gateway.conns:
            return
        task = asyncio.get_running_loop().create_task(self.gateway.close(sid, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class OtherNamespaces(socketio.AsyncNamespace):  # type: ignore[misc]
    """python-socketio's catch-all namespace (``"*"``, with ``namespaces="*"``): a CONNECT to any
    namespace but /game lands here and gets Socket.IO v5's refusal,
    ``44<ns>,{"message": "invalid_namespace", "data": {"code": 4404, "reason"}}``, where the
    library's own would be a bare string; the server then ends the transport."""

    def __init__(self, guards: Guards) -> None:
        super().__init__("*")
        self.guards = guards

    async def on_connect(self, namespace: str, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.guards.refuse_namespace(namespace, environ)


# What a client may POST: python-engineio closes the session on any other type and then waits,
# forever, for its CLOSE to be fetched (a request handler held per such POST)
CLIENT_PACKET_TYPES = frozenset({eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE})


def polling_payload_ok(body: bytes) -> bool:
    """Whether python-engineio can take a long-polling body. Its decoder raised out of the
    request handler (a traceback per request) on bad UTF-8 or framing, an empty packet, a type
    that is not a digit, bad base64, or more than its 16 packets to a payload."""
    try:
        packets = eio_payload.Payload(encoded_payload=body.decode("utf-8")).packets
    except (ValueError, KeyError, IndexError, TypeError):  # UnicodeDecodeError, binascii.Error too
        return False
    return all(p.packet_type in CLIENT_PACKET_TYPES for p in packets)


def _response(refusal: codes.HttpRefusal) -> web.Response:
    return web.json_response(refusal.body(), status=refusal.status)


class _Body:
    """A polling body already read (bounded, within its deadline), handed to python-engineio."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        data, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return data


def install(eio_server: Any) -> None:
    """Make python-engineio read a polling body from what the guard has read already."""
    original = eio_server._async["translate_request"]

    def translate_request(request: web.Request) -> dict[str, Any]:
        environ: dict[str, Any] = original(request)
        body = request.get(BODY)
        if body is not None:
            environ["wsgi.input"] = _Body(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return environ

    eio_server._async = {**eio_server._async, "translate_request": translate_request}
