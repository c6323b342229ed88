"""Every code a client or an operator can observe, as data.

Three tables, each documented where it is defined (as centrifuge's ``disconnect.go`` does):

* :data:`REFUSALS` — why a handshake was refused. The client sees a ``connect_error`` whose
  ``message`` is the name and whose ``data`` is ``{"code": <int>, "reason": <str>}``.
* :data:`DISCONNECTS` — why the server closed a live connection on purpose. The client sees a
  ``disconnect_reason`` event ``{"code", "reason", "reconnect"}`` just before the close. Codes
  under 4500 mean "reconnect", 4500 and above mean "don't".
* :class:`AckCode` — why an event was refused. The ack is
  ``{"ok": false, "error": {"code": <str>, "message": <str>}}``.
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

REFUSALS: dict[str, Refusal] = {
    r.name: r for r in (TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED, CONNECTION_LIMIT, RATE_LIMITED, UNAVAILABLE)
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


SHUTDOWN = Disconnect(4000, "shutdown")
EXPIRED = Disconnect(4005, "token_expired")
REVOKED = Disconnect(4500, "token_invalid")
KICKED = Disconnect(4503, "kicked")
SESSION_REPLACED = Disconnect(4504, "session_replaced")

DISCONNECTS: dict[str, Disconnect] = {
    d.reason: d for d in (SHUTDOWN, EXPIRED, REVOKED, KICKED, SESSION_REPLACED)
}


class AckCode(StrEnum):
    """Error codes carried by a refused event's ack."""

    BAD_REQUEST = "bad_request"  # the payload does not match the event's model
    NOT_IN_ROOM = "not_in_room"  # move/sync/state/leave for a room the connection has not joined
    ROOM_FULL = "room_full"  # the room (or the game) has no seat left
    INVALID_ACTION = "invalid_action"  # the game's rules refused the action
    RATE_LIMITED = "rate_limited"  # too many events from this connection
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the action is over the configured size
    UNAVAILABLE = "unavailable"  # the state store cannot be reached right now; retry
    FORBIDDEN = "forbidden"  # e.g. a refresh token for another user
    INTERNAL = "internal"  # a bug: logged with a traceback on the server, never shown to the client


class LeftReason(StrEnum):
    """The ``reason`` of ``player_left``."""

    LEFT = "left"
    TIMEOUT = "timeout"
    KICKED = "kicked"
