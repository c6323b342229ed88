"""Every code a client or an operator can observe, as data.

Three tables, each documented where it is defined (as centrifuge's ``disconnect.go`` does):

* :data:`REFUSALS` — why a handshake was refused. The client sees a ``connect_error`` whose
  ``message`` is the name and whose ``data`` is ``{"code": <int>, "reason": <str>}``.
* :data:`DISCONNECTS` — why the server closed a live connection on purpose. The client sees a
  ``disconnect_reason`` event ``{"code", "reason", "reconnect"}`` just before the close. Codes
  under 4500 mean "reconnect", 4500 and above mean "don't".
* :class:`AckCode` — why an event was refused. The ack is
  ``{"ok": false, "error": {"code": <str>, "message": <str>}}``.
* :class:`HttpRefusal` — why an HTTP request to the Engine.IO endpoint was refused before
  Engine.IO saw it (no session exists): a status and ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Refusal:
    """A handshake refusal: ``connect_error`` with ``message`` = name, ``data`` = code/reason."""

    name: str
    code: int
    reason: str

    def data(self, reason: str | None = None) -> dict[str, Any]:
        return {"code": self.code, "reason": reason or self.reason}


TOKEN_MISSING = Refusal("token_missing", 4401, "no credentials")
TOKEN_INVALID = Refusal("token_invalid", 4500, "invalid token")
TOKEN_EXPIRED = Refusal("token_expired", 4005, "token expired")
CONNECTION_LIMIT = Refusal("connection_limit", 4504, "too many connections for this user")
RATE_LIMITED = Refusal("rate_limited", 4029, "too many connection attempts")
UNAVAILABLE = Refusal("unavailable", 4001, "state store unreachable, retry")
# A backend hook (hooks_events has connect) refused the user. The ``message`` is the hook's own
# code (a lowercase identifier) where it gave a valid one, else hook_refused; ``reason`` is its message.
HOOK_REFUSED = Refusal("hook_refused", 4403, "refused by the backend")
# The hook could not be asked (down, slow, a bad answer, breaker open) and hooks_on_error is deny.
HOOK_UNAVAILABLE = Refusal("hook_unavailable", 4002, "the backend hook is unavailable, retry")
# A CONNECT to any namespace but /game (``/`` included): refused, then the transport is closed.
INVALID_NAMESPACE = Refusal("invalid_namespace", 4404, "only /game is served")

REFUSALS: dict[str, Refusal] = {
    r.name: r for r in (TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED, CONNECTION_LIMIT, RATE_LIMITED, UNAVAILABLE,
                        INVALID_NAMESPACE, HOOK_REFUSED, HOOK_UNAVAILABLE)
}


@dataclass(frozen=True)
class Disconnect:
    """A server-initiated close, announced with ``disconnect_reason``."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        """Codes under 4500 tell the client to come back; the others tell it not to."""
        return self.code < 4500

    def payload(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "reconnect": self.reconnect}


SHUTDOWN = Disconnect(4000, "shutdown")  # the instance is going away; reconnect (to another)
EXPIRED = Disconnect(4005, "token_expired")  # exp (+ leeway) passed; reconnect with a fresh token
# Sustained abuse: the connection kept sending events over its rate (more than
# ``abuse_max_rate_limited`` ``rate_limited`` acks within ``abuse_window_s``). Under 4500 on
# purpose: a client with a bug in a loop is a player too; it may come back after backing off,
# as a drop within grace (handshakes per address are limited, so coming back cannot flood).
FLOODING = Disconnect(4029, "rate_limited")
# A websocket frame or a long-polling body over ``max_message_bytes``. The websocket also closes
# with 1009 (Message Too Big). Under 4500: the session is kept for grace, the client may resume
# (without resending the message).
MESSAGE_TOO_BIG = Disconnect(4413, "message_too_big")
# A packet that is not Socket.IO (it does not parse). A stock client never sends one; like Node's
# server, the connection is closed. Under 4500: a drop, as for any transport error.
BAD_PACKET = Disconnect(4400, "bad_packet")
REVOKED = Disconnect(4500, "token_invalid")  # revoked, or a refresh for another user; don't reconnect
KICKED = Disconnect(4503, "kicked")  # an operator's kick; don't reconnect
SESSION_REPLACED = Disconnect(4504, "session_replaced")  # the user connected elsewhere; don't reconnect

# Not in the table because nothing can be announced: a slow consumer (its unsent bytes passed
# ``max_outbound_bytes``) is cut at the TCP level (a drop), and a transport that never joined
# /game within ``handshake_timeout_s`` is closed without a word (it never had a session).

DISCONNECTS: dict[str, Disconnect] = {
    d.reason: d for d in (SHUTDOWN, EXPIRED, FLOODING, BAD_PACKET, MESSAGE_TOO_BIG, REVOKED, KICKED,
                          SESSION_REPLACED)
}


@dataclass(frozen=True)
class HttpRefusal:
    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


ORIGIN_NOT_ALLOWED = HttpRefusal(403, "origin_not_allowed", "this Origin is not in the gateway's allowlist")
BAD_BODY = HttpRefusal(400, "bad_request", "the body ended before its Content-Length")
BAD_PAYLOAD = HttpRefusal(400, "bad_packet", "the body is not an Engine.IO payload a client may send")
REQUEST_TIMEOUT = HttpRefusal(408, "request_timeout", "the body did not arrive in time")
LENGTH_REQUIRED = HttpRefusal(411, "length_required", "a long-polling POST must carry a Content-Length")
PAYLOAD_TOO_LARGE = HttpRefusal(413, "payload_too_large", "the body is over max_message_bytes")
POLLING_UNAVAILABLE = HttpRefusal(
    400, "polling_unavailable", "this gateway accepts the websocket transport only (websocket_only); "
                                "connect with transports: ['websocket']")


class AckCode(StrEnum):
    """Error codes carried by a refused event's ack."""

    BAD_REQUEST = "bad_request"  # the payload does not match the event's model
    NOT_IN_ROOM = "not_in_room"  # move/sync/state/leave for a room the connection has not joined
    ROOM_FULL = "room_full"  # the room (or the game) has no seat left
    ROOM_LIMIT = "room_limit"  # the connection is in max_rooms_per_connection rooms already
    INVALID_ACTION = "invalid_action"  # the game's rules refused the action
    ILLEGAL_MOVE = "illegal_move"  # a game plugin refused the move or the join (gamegw.games.IllegalMove)
    RATE_LIMITED = "rate_limited"  # too many events from this user (across its connections and reconnects)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the action is over the configured size
    UNAVAILABLE = "unavailable"  # the state store cannot be reached right now; retry
    FORBIDDEN = "forbidden"  # e.g. a refresh token for another user
    # a backend hook vetoed the event without a valid code of its own (a valid one is passed on as it is)
    HOOK_REFUSED = "hook_refused"
    HOOK_UNAVAILABLE = "hook_unavailable"  # the hook could not be asked and hooks_on_error is deny; retry
    INTERNAL = "internal"  # a bug: logged with a traceback on the server, never shown to the client


class LeftReason(StrEnum):
    """The ``reason`` of ``player_left``."""

    LEFT = "left"
    TIMEOUT = "timeout"
    KICKED = "kicked"
