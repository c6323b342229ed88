"""Sessions: what survives a drop, and the grace period that waits for the user.

A session is a user's seat at the gateway: its rooms, the ``seq`` of each room when the user
was last seen, and which connection (sid, instance) holds it now. A connection that ends
without the client asking is a *drop*: the session goes into *grace* until ``grace_until``,
its rooms keep the player (the game keeps the seat), and a reconnect of the same user on any
instance claims it back. A client's own disconnect, a kick and the end of grace are *final*.

Two operations must happen exactly once across the cluster, so the store makes them atomic:

* :meth:`SessionStore.claim` moves a session from grace back to connected; a session that
  grace already ended (or that another reconnect claimed) cannot be claimed;
* :meth:`SessionStore.expire_due` hands each session whose grace ended to exactly one caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import orjson


@dataclass
class Session:
    session_id: str
    user_id: str
    sid: str
    instance_id: str
    created_at: float
    state: str = "connected"  # or "grace"
    rooms: dict[str, int] = field(default_factory=dict)  # room -> seq when the user was last seen
    dropped_at: float | None = None
    grace_until: float | None = None
    cause: str = ""  # why it dropped: transport_close, ping_timeout, instance_lost, simulated_drop, ...

    def dumps(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()

    @classmethod
    def loads(cls, raw: str | bytes) -> Session:
        return cls(**orjson.loads(raw))


class SessionStore(Protocol):
    async def put(self, session: Session) -> None:
        """Create or overwrite (the holder of a session is the only one that writes it)."""
        ...

    async def get(self, session_id: str) -> Session | None: ...

    async def of_user(self, user_id: str) -> list[Session]:
        """The user's sessions, oldest first."""
        ...

    async def drop(self, session: Session, grace_until: float) -> bool:
        """Put a session into grace (it must be ``state="grace"`` with its rooms recorded).
        False, and nothing written, when another connection holds the session now."""
        ...

    async def claim(self, session_id: str, sid: str, instance_id: str) -> Session | None:
        """Grace → connected for a new connection; None if grace is over or it was claimed."""
        ...

    async def expire_due(self, now: float) -> list[Session]:
        """Sessions whose grace ended; each is returned to exactly one caller, and deleted."""
        ...

    async def delete(self, session: Session) -> None: ...

    async def aclose(self) -> None: ...


class MemorySessionStore:
    """One process's sessions; no method awaits, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    async def put(self, session: Session) -> None:
        self._by_id[session.session_id] = session

    async def get(self, session_id: str) -> Session | None:
        s = self._by_id.get(session_id)
        return dataclasses.replace(s, rooms=dict(s.rooms)) if s else None

    async def of_user(self, user_id: str) -> list[Session]:
        found = [s for s in self._by_id.values() if s.user_id == user_id]
        return [dataclasses.replace(s, rooms=dict(s.rooms)) for s in sorted(found, key=lambda s: s.created_at)]

    async def drop(self, session: Session, grace_until: float) -> bool:
        current = self._by_id.get(session.session_id)
        if current is not None and current.sid != session.sid:
            return False
        session.state, session.grace_until = "grace", grace_until
        self._by_id[session.session_id] = dataclasses.replace(session, rooms=dict(session.rooms))
        return True

    async def claim(self, session_id: str, sid: str, instance_id: str) -> Session | None:
        s = self._by_id.get(session_id)
        if s is None or s.state != "grace":
            return None
        s.state, s.sid, s.instance_id, s.grace_until = "connected", sid, instance_id, None
        return dataclasses.replace(s, rooms=dict(s.rooms))

    async def expire_due(self, now: float) -> list[Session]:
        due = [s for s in self._by_id.values() if s.state == "grace" and (s.grace_until or 0) <= now]
        for s in due:
            del self._by_id[s.session_id]
        return due

    async def delete(self, session: Session) -> None:
        self._by_id.pop(session.session_id, None)

    async def aclose(self) -> None:
        self._by_id.clear()
